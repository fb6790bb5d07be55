"""How many units: the searches over the number of units ``K`` a scope removes, until a cost meets its goal.

:func:`select_units` asks a scope for exactly ``K`` units; :func:`select_cost` bisects ``K`` on a cost model
(:class:`~prunekit.budget.search.CostModel`, a latency table) so the plan's cost is within one unit's of the goal;
:func:`select_macs` corrects the model's goal by counting a pruned copy; :func:`select_measured` refines ``K`` itself on
a measurement (a clock on a pruned copy), bracketing the goal between two unit counts.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..core.plan import Plan
from ..core.policy import removal_steps
from ..ranking.scopes import global_plans, global_scope

__all__ = ["select_units", "select_cost", "select_macs", "select_measured"]


def _counts(plan: Plan) -> dict[str, int]:
    return {k: len(v) for k, v in plan.remove.items()}


def _capacity(scores: Mapping[str, torch.Tensor], limits: Mapping[str, Any]) -> dict[str, int]:
    return {k: removal_steps(len(s), *limits[k])[-1] if k in limits else len(s) for k, s in scores.items()}


def select_units(scope: Callable, scores: Mapping[str, torch.Tensor], units: int,
                 limits: Mapping[str, Any] | None = None) -> Plan:
    """Ask ``scope`` for exactly ``units`` units (fraction passed too, for scopes that only read it)."""
    total = sum(len(s) for s in scores.values())
    return scope(scores, units / total if total else 0.0, target=units, limits=limits)


def select_cost(scope: Callable, scores: Mapping[str, torch.Tensor], amount: float, cost: Any,
                limits: Mapping[str, Any] | None = None) -> Plan:
    """The plan of ``scope`` whose cost (``cost.removed``: a :class:`~prunekit.budget.search.CostModel`, a latency
    table) is closest to ``amount``: bisection on the number of units, then the better of the two neighbours (so the
    result is within one unit's cost of ``amount``)."""
    limits = limits or {}
    cap = sum(_capacity(scores, limits).values())
    plans: dict[int, Plan] = {}
    costs: dict[int, float] = {}
    # the built-in global scope ranks once for every k (and counts without building plans); any other scope is asked
    # for each k
    ranked = global_plans(scores, limits) if scope is global_scope else None

    def plan_at(k: int) -> Plan:
        if k not in plans:
            plans[k] = ranked(k) if ranked is not None else select_units(scope, scores, k, limits)
        return plans[k]

    def at(k: int) -> float:
        if k not in costs:
            costs[k] = cost.removed(ranked.counts(k) if ranked is not None else _counts(plan_at(k)))
        return costs[k]

    lo, hi = 0, cap  # invariant: cost(lo) <= amount < cost(hi)
    if at(cap) <= amount:
        return plan_at(cap)
    interpolate = True
    while hi - lo > 1:
        # the cost grows nearly linearly in k: a guess by linear interpolation usually lands a few units away;
        # every other step halves the interval, so the search never takes more than twice bisection's steps
        if interpolate and at(hi) > at(lo):
            mid = lo + int((amount - at(lo)) / (at(hi) - at(lo)) * (hi - lo))
            mid = min(max(mid, lo + 1), hi - 1)
        else:
            mid = (lo + hi) // 2
        interpolate = not interpolate
        if at(mid) <= amount:
            lo = mid
        else:
            hi = mid
    return plan_at(lo) if amount - at(lo) <= at(hi) - amount else plan_at(hi)


def select_macs(scope: Callable, scores: Mapping[str, torch.Tensor], amount: float, cost: Any,
                measure: Callable[[Plan], float], tolerance: float, limits: Mapping[str, Any] | None = None,
                rounds: int = 4) -> tuple[Plan, float]:
    """:func:`select_cost` for MACs, corrected by counting: ``measure(plan)`` returns the MACs a plan really removes
    (the caller prunes a copy and counts); the target handed to the model moves by the error until the count is
    within ``tolerance`` of ``amount``. Returns the closest plan and what it removes."""
    goal, best = amount, None
    for _ in range(rounds):
        plan = select_cost(scope, scores, goal, cost, limits)
        got = measure(plan)
        if best is None or abs(got - amount) < abs(best[1] - amount):
            best = (plan, got)
        if abs(got - amount) <= tolerance:
            break
        goal += amount - got
    return best


def select_measured(scope: Callable, scores: Mapping[str, torch.Tensor], amount: float, cost: Any,
                    measure: Callable[[Plan], float], limits: Mapping[str, Any] | None = None,
                    rounds: int = 6) -> tuple[Plan, float, float | None]:
    """:func:`select_cost` on a modelled cost (a latency table), then the number of units refined on what
    ``measure(plan)`` says a plan removes (a clock on a pruned copy): steps along the model's slope until the goal is
    bracketed, then bisection, at most ``rounds`` measurements. Returns the closest measured plan, what it removes,
    and the measured step between the bracketing unit counts (one unit's worth at the goal; None if not bracketed).
    """
    limits = limits or {}
    cap = sum(_capacity(scores, limits).values())
    ranked = global_plans(scores, limits) if scope is global_scope else None

    def plan_at(k: int) -> Plan:
        return ranked(k) if ranked is not None else select_units(scope, scores, k, limits)

    def modelled(k: int) -> float:
        return cost.removed(ranked.counts(k) if ranked is not None else _counts(plan_at(k)))

    seen: dict[int, tuple[Plan, float]] = {}
    k = select_cost(scope, scores, amount, cost, limits).n_removed
    lo = hi = None  # measured(lo) <= amount < measured(hi)
    for _ in range(rounds):
        if k not in seen:
            plan = plan_at(k)
            seen[k] = (plan, measure(plan))
        got = seen[k][1]
        if got <= amount:
            lo = k if lo is None else max(lo, k)
        else:
            hi = k if hi is None else min(hi, k)
        if lo is not None and hi is not None:
            if hi - lo <= 1:
                break
            k = (lo + hi) // 2
            continue
        slope = max(modelled(k) / k, 1e-30) if k else max(modelled(1), 1e-30)
        step = int(round((amount - got) / slope)) or (1 if got <= amount else -1)
        nxt = min(max(k + step, 0), cap)
        if nxt == k:
            break
        k = nxt
    best = min(seen, key=lambda n: abs(seen[n][1] - amount))
    step = seen[hi][1] - seen[lo][1] if lo is not None and hi is not None and hi - lo <= 1 else None
    return seen[best][0], seen[best][1], step
