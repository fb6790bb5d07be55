"""Global I, one-shot (Table 3): TINA's score and scope, pruned once after the first cycle."""
from prunekit.engine.strategy import Strategy, register_strategy

GLOBAL_SCALED_ONESHOT = register_strategy(Strategy(
    name="global_scaled_oneshot", scorer="tina", scope="global", mode="oneshot", groups="adapters",
    description="global selection by I = I_0 / (n + m), pruned once",
))
