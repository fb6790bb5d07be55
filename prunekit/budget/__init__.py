"""What "done" means and what a model costs: budgets (sigma, params, MACs, channels), the cost model and the
selection search that meets them, op counting on the model's own modules, measured latency.
"""
