"""Selection scopes: turn per-neuron scores into a :class:`~prunekit.plan.Plan`.

- ``local``: remove the same fraction from every group (``round(fraction * n_g)`` of its lowest-scored neurons);
- ``global``: one ranking across all groups, removing exactly ``round(fraction * N)`` neurons in total, N = sum n_g.
  Groups compete, so a group can lose every neuron (TINA removes whole adapters this way, Fig. 4).

Rounding is half-up (``round(2.5) = 3``), not Python's half-to-even. Ties break by group order, then neuron index,
so a selection is deterministic. A scope is any callable ``(scores, fraction) -> Plan``; register your own with
:func:`register_scope`.
"""
from __future__ import annotations

import math
from typing import Mapping, Protocol

import torch

from .plan import Plan
from .registry import PrunekitError, Registry

__all__ = ["Scope", "SCOPES", "register_scope", "get_scope", "local_scope", "global_scope", "round_half_up"]


def round_half_up(x: float) -> int:
    # the epsilon absorbs float error in fraction * n (e.g. (17 / 35) * 35 = 16.999999999999996)
    return math.floor(x + 0.5 + 1e-9)


class Scope(Protocol):
    def __call__(self, scores: Mapping[str, torch.Tensor], fraction: float) -> Plan: ...


SCOPES: Registry[Scope] = Registry("scope", entry_point_group="prunekit.scopes", import_paths=True)


def register_scope(name: str, fn: Scope | None = None, *, overwrite: bool = False):
    return SCOPES.register(name, fn, overwrite=overwrite)


def get_scope(name_or_fn: str | Scope) -> Scope:
    return name_or_fn if callable(name_or_fn) else SCOPES.get(name_or_fn)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise PrunekitError(f"fraction to remove must be in [0, 1], got {fraction}")


@register_scope("local")
def local_scope(scores: Mapping[str, torch.Tensor], fraction: float) -> Plan:
    """Remove ``round(fraction * n_g)`` lowest-scored neurons from every group g."""
    _check_fraction(fraction)
    remove = {}
    for name, s in scores.items():
        k = min(len(s), round_half_up(fraction * len(s)))
        order = torch.argsort(s.float(), stable=True)
        remove[name] = order[:k].tolist()
    return Plan(widths={k: len(v) for k, v in scores.items()}, remove=remove,
                meta={"scope": "local", "fraction": fraction})


@register_scope("global")
def global_scope(scores: Mapping[str, torch.Tensor], fraction: float) -> Plan:
    """Remove the ``round(fraction * N)`` lowest-scored neurons of all groups together."""
    _check_fraction(fraction)
    names = list(scores)
    widths = {k: len(scores[k]) for k in names}
    total = sum(widths.values())
    k = min(total, round_half_up(fraction * total))
    remove: dict[str, list[int]] = {name: [] for name in names}
    if total and k:
        flat = torch.cat([scores[n].float().reshape(-1) for n in names])
        owner = torch.cat([torch.full((widths[n],), i) for i, n in enumerate(names)])
        local = torch.cat([torch.arange(widths[n]) for n in names])
        for j in torch.argsort(flat, stable=True)[:k].tolist():
            remove[names[owner[j]]].append(int(local[j]))
    return Plan(widths=widths, remove={n: v for n, v in remove.items() if v},
                meta={"scope": "global", "fraction": fraction})

