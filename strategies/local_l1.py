"""Local L1 selection (Tables 3 and 5): the same fraction from every adapter, ranked by down row + up column.

Within one adapter the 1 / (n + m) scaling changes no ranking, so local selection needs no scaled variant.
"""
from prunekit.engine.strategy import Strategy, register_strategy

LOCAL_L1 = register_strategy(Strategy(
    name="local_l1", scorer="l1", scope="local", mode="iterative", groups="adapters",
    description="local selection by |W_down row|_1 + |W_up column|_1, pruned iteratively",
))
LOCAL_L1_ONESHOT = register_strategy(Strategy(
    name="local_l1_oneshot", scorer="l1", scope="local", mode="oneshot", groups="adapters",
    description="local selection by |W_down row|_1 + |W_up column|_1, pruned once",
))
