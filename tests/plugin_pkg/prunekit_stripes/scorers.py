"""``weight_product``: a neuron's down-row L2 norm times its up-column L2 norm."""
from prunekit.ranking.scorers import register_scorer


@register_scorer("weight_product")
def weight_product(group, stats):
    """L2 norm of each neuron's down row times the L2 norm of its up column (higher = keep)."""
    down = sum(w.detach().float().flatten(1).norm(dim=1) for w in group.rows())
    up = sum(w.detach().float().flatten(1).norm(dim=1) for w in group.columns())
    return down * up
