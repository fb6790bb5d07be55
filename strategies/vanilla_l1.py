"""Vanilla L1 (Table 3): the same fraction from every adapter, ranked by the down row's L1 norm only, one-shot."""
from prunekit.engine.strategy import Strategy, register_strategy

VANILLA_L1 = register_strategy(Strategy(
    name="vanilla_l1", scorer="l1_down", scope="local", mode="oneshot", groups="adapters",
    description="local selection by |W_down row|_1 alone, pruned once",
))
