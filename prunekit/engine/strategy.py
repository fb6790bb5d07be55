"""Strategies: a scorer, a scope and a schedule mode under one name.

Built-in strategies live in the checkout's top-level ``strategies/`` folder, one short file each, installed as the
package ``prunekit.strategies`` (pyproject.toml maps the folder) and imported under that name only, so a
``strategies`` package or ``strategies.py`` in the working directory is never imported in its place. They are also
declared in the ``prunekit.strategies`` entry-point group; a third-party package adds one by declaring an entry point
that imports a module calling :func:`register_strategy`.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..registry import PrunekitError, Registry
from .schedule import Schedule, oneshot_sigma0

__all__ = ["Strategy", "STRATEGIES", "register_strategy", "get_strategy", "list_strategies"]


@dataclass(frozen=True)
class Strategy:
    """How to prune: ``scorer`` ranks units, ``scope`` selects them, ``mode`` says iterative or one-shot, ``groups``
    names the group source it is meant for.

    ``scorer`` and ``scope`` are registered names or callables; ``groups`` a registered group source (``'adapters'``
    for the paper's strategies) or None (any: the engine is then given ``groups_fn=``).
    """

    name: str
    scorer: object
    scope: object = "global"
    mode: Literal["iterative", "oneshot"] = "iterative"
    description: str = ""
    groups: str | None = None

    def __post_init__(self):
        if self.mode not in ("iterative", "oneshot"):
            raise PrunekitError(f"strategy {self.name!r}: mode must be 'iterative' or 'oneshot', got {self.mode!r}")

    def schedule(self, rho: float, sigma_target: float, sigma_reference: float | None = 32.0) -> Schedule:
        return Schedule(rho=rho, sigma_target=sigma_target, mode=self.mode, sigma_reference=sigma_reference)

    def initial_sigma(self, sigma0: float, sigma_target: float, rho: float) -> float:
        """Compression to inject adapters at: ``sigma0`` (iterative) or one prune below the target (one-shot)."""
        return sigma0 if self.mode == "iterative" else oneshot_sigma0(sigma_target, rho)


STRATEGIES: Registry[Strategy] = Registry("strategy", entry_point_group="prunekit.strategies",
                                          load_builtins=lambda: _load_builtins())


def register_strategy(strategy: Strategy, *, overwrite: bool = False) -> Strategy:
    return STRATEGIES.register(strategy.name, strategy, overwrite=overwrite)


BUILTINS = "prunekit.strategies"


def _load_builtins() -> None:
    """Import ``prunekit.strategies``, registering the built-ins.

    An installed prunekit has it as ``prunekit/strategies/``. In a source checkout (on ``PYTHONPATH``, or an editable
    install) it is ``<checkout>/strategies/``, loaded from that file location under the name ``prunekit.strategies``:
    always the strategies of the prunekit that is running, never a folder found through ``sys.path``.
    """
    if BUILTINS in sys.modules:
        return
    here = Path(__file__).resolve().parents[1]  # the prunekit package folder
    init = here.parent / "strategies" / "__init__.py"
    if (here / "strategies").is_dir() or not init.is_file():
        try:
            importlib.import_module(BUILTINS)
        except ModuleNotFoundError as e:
            if e.name != BUILTINS:
                raise
            raise PrunekitError(f"the built-in strategies are missing: no module {BUILTINS} in {here}; reinstall "
                                "prunekit") from None
        return
    spec = importlib.util.spec_from_file_location(BUILTINS, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[BUILTINS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[BUILTINS]
        raise
    sys.modules["prunekit"].strategies = module

def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)


def list_strategies() -> list[Strategy]:
    return [s for _, s in STRATEGIES.items()]
