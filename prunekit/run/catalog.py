"""What a recipe can name: one line per registered strategy, scorer, scope, method, dataset and model builder.

Every registry is read through its public name, so entries added by ``register_*`` calls and by installed packages
(entry points ``prunekit.strategies``, ``prunekit.ranking.scorers``, ``prunekit.ranking.scopes``, ``prunekit.methods``,
``prunekit.datasets``, ``prunekit.models``) are listed like the built-in ones. Each kind imports its own registry
only when it is listed: strategies need no torch (``prunekit list strategies`` answers in a fraction of a second);
scorers, scopes, methods, datasets and models live in modules that import torch (and timm).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..methods.table import ParamRow

__all__ = ["REGISTRIES", "catalog", "param_rows"]


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _strategies() -> list[str]:
    from ..engine.strategy import list_strategies

    return [f"{s.name:<28} {s.scorer} / {s.scope} / {s.mode}: {s.description}" for s in list_strategies()] + [
        f"{'none':<28} prunes nothing: trains strategy.cycles cycles (default 1) of the method as it is (baselines)"]


def _scorers() -> list[str]:
    from ..ranking.scorers import SCORERS

    return [f"{name:<22} {_first_line(fn)}" for name, fn in SCORERS.items()]


def _scopes() -> list[str]:
    from ..ranking.scopes import SCOPES

    return [f"{name:<10} {_first_line(fn)}" for name, fn in SCOPES.items()]


def _methods() -> list[str]:
    from ..methods import METHODS

    return [f"{name:<20} {'prunable' if m.prunable else '        '}  {m.description}" for name, m in METHODS.items()]


def _datasets() -> list[str]:
    from ..data.datasets import DATASETS

    items = list(DATASETS.items())
    width = max([14] + [len(name) for name, _ in items])
    return [f"{name:<{width}} {'offline ' if info.offline else 'files   '} {info.description}" for name, info in items]


def _models() -> list[str]:
    import timm

    from ..models.backbone import MODELS

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
    from ..methods import METHODS
    from ..methods.table import param_table

    for m in methods:
        METHODS.get(m)  # did-you-mean for a typo
    return param_table(model_name, classes, methods or None, img_size, paper)
