"""Strategies: a scorer, a scope and a schedule mode under one name.

Built-in strategies live in the top-level ``strategies/`` package, one short file each, and are also declared in the
``prunekit.strategies`` entry-point group; a third-party package adds one by declaring an entry point that imports a
module calling :func:`register_strategy`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from .registry import PrunekitError, Registry
from .schedule import Schedule, oneshot_sigma0

__all__ = ["Strategy", "STRATEGIES", "register_strategy", "get_strategy", "list_strategies"]


@dataclass(frozen=True)
class Strategy:
    """How to prune: ``scorer`` ranks neurons, ``scope`` selects them, ``mode`` says iterative or one-shot.

    ``scorer`` and ``scope`` are registered names or callables.
    """

    name: str
    scorer: object
    scope: object = "global"
    mode: Literal["iterative", "oneshot"] = "iterative"
    description: str = ""

    def __post_init__(self):
        if self.mode not in ("iterative", "oneshot"):
            raise PrunekitError(f"strategy {self.name!r}: mode must be 'iterative' or 'oneshot', got {self.mode!r}")

    def schedule(self, rho: float, sigma_target: float, sigma_reference: float = 32.0) -> Schedule:
        return Schedule(rho=rho, sigma_target=sigma_target, mode=self.mode, sigma_reference=sigma_reference)

    def initial_sigma(self, sigma0: float, sigma_target: float, rho: float) -> float:
        """Compression to inject adapters at: ``sigma0`` (iterative) or one prune below the target (one-shot)."""
        return sigma0 if self.mode == "iterative" else oneshot_sigma0(sigma_target, rho)


STRATEGIES: Registry[Strategy] = Registry("strategy", entry_point_group="prunekit.strategies")


def register_strategy(strategy: Strategy, *, overwrite: bool = False) -> Strategy:
    return STRATEGIES.register(strategy.name, strategy, overwrite=overwrite)


def _load_builtins() -> None:
    # The entry points cover installed checkouts; importing the package covers a checkout on PYTHONPATH.
    try:
        importlib.import_module("strategies")
    except ModuleNotFoundError:
        pass


def get_strategy(name: str) -> Strategy:
    _load_builtins()
    return STRATEGIES.get(name)


def list_strategies() -> list[Strategy]:
    _load_builtins()
    return [s for _, s in STRATEGIES.items()]
