"""Global I_0 (Table 3): one ranking by down row + up column L1 without the 1 / (n + m) scaling, one-shot."""
from prunekit.strategy import Strategy, register_strategy

GLOBAL_UNSCALED = register_strategy(Strategy(
    name="global_unscaled", scorer="coupled_l1", scope="global", mode="oneshot",
    description="global selection by I_0 = |W_down row|_1 + |W_up column|_1 (unscaled), pruned once",
))
