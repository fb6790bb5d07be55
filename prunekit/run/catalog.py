"""What a recipe can name: one line per registered strategy, scorer, scope, method, dataset and model builder.

Every registry is read through its public name, so entries added by ``register_*`` calls and by installed packages
(entry points ``prunekit.strategies``, ``prunekit.scorers``, ``prunekit.scopes``, ``prunekit.methods``,
``prunekit.datasets``, ``prunekit.models``) are listed like the built-in ones.
"""
from __future__ import annotations

from typing import Callable

import timm

from ..backbone import MODELS
from ..data import DATASETS
from ..methods import METHODS
from ..methods.table import ParamRow, param_table
from ..scopes import SCOPES
from ..scorers import SCORERS
from ..strategy import list_strategies

__all__ = ["REGISTRIES", "catalog", "param_rows"]


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _strategies() -> list[str]:
    return [f"{s.name:<28} {s.scorer} / {s.scope} / {s.mode}: {s.description}" for s in list_strategies()] + [
        f"{'none':<28} prunes nothing: trains strategy.cycles cycles (default 1) of the method as it is (baselines)"]


def _scorers() -> list[str]:
    return [f"{name:<22} {_first_line(fn)}" for name, fn in SCORERS.items()]


def _scopes() -> list[str]:
    return [f"{name:<10} {_first_line(fn)}" for name, fn in SCOPES.items()]


def _methods() -> list[str]:
    return [f"{name:<20} {'prunable' if m.prunable else '        '}  {m.description}" for name, m in METHODS.items()]


def _datasets() -> list[str]:
    return [f"{name:<14} {'offline ' if info.offline else 'files   '} {info.description}"
            for name, info in DATASETS.items()]


def _models() -> list[str]:
    lines = [f"{name:<28} {b.description}" for name, b in MODELS.items()]
    return lines + [f"{'<any timm model>':<28} one of timm's {len(timm.list_models()):,} model names "
                    "(timm.list_models()), the default"]


REGISTRIES: dict[str, Callable[[], list[str]]] = {
    "strategies": _strategies, "scorers": _scorers, "scopes": _scopes, "methods": _methods, "datasets": _datasets,
    "models": _models,
}


def catalog(kind: str) -> list[str]:
    """The lines ``prunekit list KIND`` prints for a registry (``kind``: a key of :data:`REGISTRIES`)."""
    return REGISTRIES[kind]()


def param_rows(model_name: str, classes: int, methods: list[str], img_size: int | None, paper: int | None
               ) -> list[ParamRow]:
    """Trainable parameters of ``methods`` (default: every row of the paper's tables) on one backbone."""
    for m in methods:
        METHODS.get(m)  # did-you-mean for a typo
    return param_table(model_name, classes, methods or None, img_size, paper)
