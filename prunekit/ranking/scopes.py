"""Selection scopes: per-unit scores into a :class:`~prunekit.core.plan.Plan` that removes an exact number of units.

A scope is any callable ``scope(scores, fraction=None, *, target=None, limits=None) -> Plan``:

- ``scores``: group name -> one score per unit (higher = keep);
- ``target``: units to remove *in total*; the engine always passes it, and every built-in scope removes exactly that
  many (or, when widths must stay multiples of ``round_to``, as many as fit, less than one step short);
- ``limits``: group name -> :class:`Limit` (the lowest width the group may reach now, and its ``round_to``); a group
  without an entry may lose every unit;
- ``fraction``: the older form, ``target = round_half_up(fraction * N)``.

Built-ins:

- ``global``: one ranking across all groups; the lowest-scored units go first, skipping a group once it is at its
  limit. Groups compete, so a group can lose every unit (TINA removes whole adapters this way, Fig. 4).
- ``local``: every group loses the same fraction ``target / N`` of its width: quotas ``q_g = target * n_g / N``
  (a group at its limit keeps its limit and the rest is shared out again), rounded down, then the units left over go
  one by one to the groups with the largest remainders (largest-remainder / Hamilton rounding), so the total is exact.
  Called with ``fraction`` alone, ``local`` rounds every group on its own (``round_half_up(fraction * n_g)``), the
  pre-budget behaviour, whose total can miss ``round(fraction * N)`` by up to half the number of groups.

Ties break by group order, then unit index, so a selection is deterministic. A target the limits cannot reach raises
:class:`~prunekit.core.policy.UnreachableTargetError` (naming the most that can go) before anything is modified.
Register your own scope with :func:`register_scope`.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Protocol

import torch

from ..core.plan import Plan
from ..core.policy import UnreachableTargetError, removal_steps, round_half_up
from ..registry import PrunekitError, Registry

__all__ = ["Scope", "Limit", "SCOPES", "register_scope", "get_scope", "local_scope", "global_scope", "global_plans",
           "round_half_up", "capacity"]


class Limit(NamedTuple):
    """What one group may lose now: its width may not go below ``lowest`` and must stay a multiple of ``round_to``
    (or unchanged)."""

    lowest: int = 0
    round_to: int = 1


class Scope(Protocol):
    def __call__(self, scores: Mapping[str, torch.Tensor], fraction: float | None = None, *, target: int | None = None,
                 limits: Mapping[str, Limit] | None = None) -> Plan: ...


SCOPES: Registry[Scope] = Registry("scope", entry_point_group="prunekit.scopes", builtins=(__name__,),
                                  import_paths=True)


def register_scope(name: str, fn: Scope | None = None, *, overwrite: bool = False):
    return SCOPES.register(name, fn, overwrite=overwrite)


def get_scope(name_or_fn: str | Scope) -> Scope:
    """A registered scope by name, a ``package.module:function`` path (imported), or the callable itself."""
    return name_or_fn if callable(name_or_fn) else SCOPES.get(name_or_fn)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise PrunekitError(f"fraction to remove must be in [0, 1], got {fraction}")


def _steps(scores: Mapping[str, torch.Tensor], limits: Mapping[str, Limit] | None) -> dict[str, list[int]]:
    limits = limits or {}
    return {k: removal_steps(len(s), *limits.get(k, Limit())) for k, s in scores.items()}


def capacity(widths: Mapping[str, int], limits: Mapping[str, Limit] | None = None) -> int:
    """Most units the limits let a scope remove in total."""
    limits = limits or {}
    return sum(removal_steps(n, *limits.get(k, Limit()))[-1] for k, n in widths.items())


def _target(scores: Mapping[str, torch.Tensor], fraction: float | None, target: int | None,
            steps: Mapping[str, list[int]]) -> int:
    total = sum(len(s) for s in scores.values())
    if target is None:
        if fraction is None:
            raise PrunekitError("scope: pass target= (units to remove) or a fraction")
        _check_fraction(fraction)
        target = min(total, round_half_up(fraction * total))
    if not isinstance(target, int) or target < 0:
        raise PrunekitError(f"target: expected a number of units >= 0, got {target!r}")
    most = sum(s[-1] for s in steps.values())
    if target > most:
        raise UnreachableTargetError(f"target: {target} of {total} units cannot be removed; the groups' limits "
                                     f"(min_width, round_to, max_ratio) allow at most {most}")
    return target


def _lowest_first(s: torch.Tensor) -> list[int]:
    return torch.argsort(s.float(), stable=True).tolist()


def _plan(scores: Mapping[str, torch.Tensor], remove: dict[str, list[int]], meta: dict) -> Plan:
    plan = Plan(widths={k: len(v) for k, v in scores.items()}, remove={k: v for k, v in remove.items() if v},
                meta=meta)
    plan.meta["removed_units"] = plan.n_removed
    return plan


@register_scope("local")
def local_scope(scores: Mapping[str, torch.Tensor], fraction: float | None = None, *, target: int | None = None,
                limits: Mapping[str, Limit] | None = None) -> Plan:
    """Remove the same fraction of every group: exactly ``target`` units in total (largest remainders), or, with
    ``fraction`` alone, ``round_half_up(fraction * n_g)`` from every group g."""
    steps = _steps(scores, limits)
    widths = {k: len(v) for k, v in scores.items()}
    if target is None and fraction is not None:
        _check_fraction(fraction)
        counts = {}
        for k, n in widths.items():
            want = min(n, round_half_up(fraction * n))
            counts[k] = max(r for r in steps[k] if r <= want)
        remove = {k: _lowest_first(scores[k])[:counts[k]] for k in scores}
        return _plan(scores, remove, {"scope": "local", "fraction": fraction})
    k_total = _target(scores, fraction, target, steps)
    counts = _hamilton(widths, steps, k_total)
    remove = {k: _lowest_first(scores[k])[:counts[k]] for k in scores}
    total = sum(widths.values())
    return _plan(scores, remove, {"scope": "local", "fraction": k_total / total if total else 0.0,
                                  "target_units": k_total})


def _hamilton(widths: Mapping[str, int], steps: Mapping[str, list[int]], k: int) -> dict[str, int]:
    """Largest-remainder apportionment of ``k`` removals proportional to the widths, within each group's steps."""
    names = list(widths)
    caps = {g: steps[g][-1] for g in names}
    quota: dict[str, float] = {}
    free, left = list(names), float(k)
    while True:  # water-filling: a group whose quota exceeds its cap is fixed at the cap, the rest shares again
        n_free = sum(widths[g] for g in free)
        over = [g for g in free if n_free and left * widths[g] / n_free > caps[g] + 1e-9]
        if not over:
            for g in free:
                quota[g] = left * widths[g] / n_free if n_free else 0.0
            break
        for g in over:
            quota[g] = float(caps[g])
            left -= caps[g]
            free.remove(g)
    counts = {g: max(r for r in steps[g] if r <= quota[g] + 1e-9) for g in names}
    short = k - sum(counts.values())
    while short > 0:
        best, best_rem = None, None
        for g in names:
            nxt = next((r for r in steps[g] if r > counts[g]), None)
            if nxt is None or nxt - counts[g] > short:
                continue
            rem = quota[g] - counts[g]
            if best is None or rem > best_rem + 1e-12:
                best, best_rem = g, rem
        if best is None:
            break  # only steps larger than what is left: less than one round_to step short
        nxt = next(r for r in steps[best] if r > counts[best])
        short -= nxt - counts[best]
        counts[best] = nxt
    return counts


@register_scope("global")
def global_scope(scores: Mapping[str, torch.Tensor], fraction: float | None = None, *, target: int | None = None,
                 limits: Mapping[str, Limit] | None = None) -> Plan:
    """Remove the ``target`` (or ``round_half_up(fraction * N)``) lowest-scored units of all groups together."""
    steps = _steps(scores, limits)
    k = _target(scores, fraction, target, steps)
    return _Ranking(scores, steps).plan(k, fraction if target is None else None)


class _Ranking:
    """The global ranking of ``scores`` under per-group removal ``steps``, computed once; :meth:`plan` gives the
    global plan for any number of units. With unit steps the plans for growing ``k`` are nested (the first ``k``
    units of one removal order), which :func:`~prunekit.budget.search.select_cost` uses to search ``k`` without ranking
    again (see :func:`global_plans`)."""

    def __init__(self, scores: Mapping[str, torch.Tensor], steps: Mapping[str, list[int]]):
        self.scores, self.steps = scores, steps
        self.names = list(scores)
        self.widths = {k: len(scores[k]) for k in self.names}
        self.total = sum(self.widths.values())
        self.unit_steps = all(s == list(range(len(s))) for s in steps.values())
        self.orders: dict[str, list[int]] = {}
        self.ranked: list[int] = []
        self.owner: list[int] = []
        self.local: list[int] = []
        self.removal: torch.Tensor | None = None  # unit steps: group index of every removal, in order
        if not self.total:
            return
        flat = torch.cat([scores[n].float().reshape(-1).cpu() for n in self.names])
        widths = torch.tensor([self.widths[n] for n in self.names])
        starts = torch.cumsum(widths, 0) - widths  # each group's first index in ``flat``
        owner = torch.repeat_interleave(torch.arange(len(self.names)), widths)
        local = torch.arange(self.total) - torch.repeat_interleave(starts, widths)
        ranked = torch.argsort(flat, stable=True)
        self.owner, self.local, self.ranked = owner.tolist(), local.tolist(), ranked.tolist()
        # every group's units in ranking order: the ranked positions sorted by group, stably
        owner_r = owner[ranked]
        by_group = torch.argsort(owner_r, stable=True)
        for i, order in enumerate(torch.split(local[ranked][by_group], widths.tolist())):
            if len(order):
                self.orders[self.names[i]] = order.tolist()
        if self.unit_steps:  # walk the ranking, skipping groups at their limit: a unit goes if fewer than the
            # group's cap of its units rank before it
            occurrence = torch.empty_like(by_group)
            occurrence[by_group] = torch.arange(self.total) - starts[owner_r[by_group]]
            caps = torch.tensor([steps[n][-1] for n in self.names])
            self.removal = owner_r[occurrence < caps[owner_r]]

    def counts(self, k: int) -> dict[str, int]:
        """Units the global plan for ``k`` removes from every group (without building the plan)."""
        counts = {name: 0 for name in self.names}
        if self.total and k:
            if self.removal is not None:
                taken = torch.bincount(self.removal[:k], minlength=len(self.names)).tolist()
                counts = dict(zip(self.names, taken))
            else:
                counts = _chunked(self.names, self.orders, self.steps, self.ranked, self.owner, self.local, k)
        return counts

    def plan(self, k: int, fraction: float | None = None) -> Plan:
        counts = self.counts(k)
        remove = {n: self.orders.get(n, [])[:counts[n]] for n in self.names}
        return _plan(self.scores, remove, {"scope": "global", "fraction": fraction if fraction is not None
                                           else (k / self.total if self.total else 0.0), "target_units": k})


def global_plans(scores: Mapping[str, torch.Tensor], limits: Mapping[str, Limit] | None = None):
    """``k -> global_scope(scores, target=k, limits=limits)`` with the ranking computed once (a search over ``k``
    asks for many plans of the same scores); ``.counts(k)`` gives the units per group alone."""
    ranking = _Ranking(scores, _steps(scores, limits))
    most = sum(s[-1] for s in ranking.steps.values())

    def plan(k: int) -> Plan:
        if k > most:
            _target(scores, None, k, ranking.steps)  # raises the scope's own error
        return ranking.plan(k)

    plan.counts = ranking.counts  # what plan(k) removes per group, without building it (a search's inner loop)
    return plan


def _chunked(names, orders, steps, ranked, owner, local, k) -> dict[str, int]:
    """Global selection when widths move in steps of ``round_to``: a step is ranked by its highest-ranked unit."""
    rank = {}
    for pos, j in enumerate(ranked):
        rank[(names[owner[j]], local[j])] = pos
    chunks = []
    for g in names:
        st = steps[g]
        for lo, hi in zip(st, st[1:]):
            chunks.append((rank[(g, orders[g][hi - 1])], g, lo, hi))
    chunks.sort()
    counts = {g: 0 for g in names}
    dead, taken = set(), 0
    for _, g, lo, hi in chunks:
        if g in dead or counts[g] != lo:
            continue
        if taken + hi - lo <= k:
            counts[g] = hi
            taken += hi - lo
            if taken == k:
                break
        else:
            dead.add(g)
    return counts
