"""Pruning over time: the iterative engine (train, prune, fine-tune, repeat), the one-shot prune() call, the
cycle schedule and named strategies (scorer + scope + schedule).
"""
