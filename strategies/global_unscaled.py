"""Global I_0 (Table 3): one ranking by down row + up column L1 without the 1 / (n + m) scaling, one-shot and iterative.

The one-shot row is the paper's; the iterative one isolates the scaling: it is TINA without 1 / (n + m), so the two
differ only once adapters have different widths (after the first prune, or from the start in a model whose stages
have different widths, like Swin).
"""
from prunekit.engine.strategy import Strategy, register_strategy

GLOBAL_UNSCALED = register_strategy(Strategy(
    name="global_unscaled", scorer="l1", scope="global", mode="oneshot", groups="adapters",
    description="global selection by I_0 = |W_down row|_1 + |W_up column|_1 (unscaled), pruned once",
))
GLOBAL_UNSCALED_ITERATIVE = register_strategy(Strategy(
    name="global_unscaled_iterative", scorer="l1", scope="global", mode="iterative", groups="adapters",
    description="global selection by I_0 = |W_down row|_1 + |W_up column|_1 (unscaled), pruned iteratively "
                "(TINA without 1 / (n + m))",
))
