"""TINA: global selection across adapters, Eq. 2 scaled score, iterative schedule (Algorithm 1)."""
from prunekit.engine.strategy import Strategy, register_strategy

TINA = register_strategy(Strategy(
    name="tina", scorer="tina", scope="global", mode="iterative", groups="adapters",
    description="global ranking by I = (|W_down row| + |W_up column|) / (n + m), pruned iteratively (the paper)",
))
