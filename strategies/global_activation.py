"""Global L1(a) (Table 3): one ranking by mean |activation| / (n + m), iterative and one-shot."""
from prunekit.engine.strategy import Strategy, register_strategy

GLOBAL_ACTIVATION = register_strategy(Strategy(
    name="global_activation", scorer="l1_activation_scaled", scope="global", mode="iterative", groups="adapters",
    description="global selection by mean |phi(W_down h)| / (n + m) over calibration batches, pruned iteratively",
))
GLOBAL_ACTIVATION_ONESHOT = register_strategy(Strategy(
    name="global_activation_oneshot", scorer="l1_activation_scaled", scope="global", mode="oneshot", groups="adapters",
    description="global selection by mean |phi(W_down h)| / (n + m) over calibration batches, pruned once",
))
