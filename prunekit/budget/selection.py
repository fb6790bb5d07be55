"""The one selection search: a plan that meets a budget's step, for ``prune()`` and the engine alike.

Both ask the same questions of a model's groups, and answer them here:

- can the budget be reached at all within the groups' limits (:func:`check_budget_reachable`, before anything runs);
- what the model measures now (:func:`measure_now`: units, parameters, MACs or measured latency);
- which units go (:func:`select_plan`): exact unit counts for sigma / channels, the exact parameter cost model for
  params, and for MACs (or groups whose parameter cost is first-order) the cost model corrected by counting a pruned
  copy (:func:`counted_trial`, the model itself untouched); for latency the measured lookup table
  (:mod:`prunekit.budget.latency`) corrected by measuring a pruned copy; with ``families`` (uniform pruning,
  :mod:`prunekit.budget.uniform`) the same search runs over the families' steps.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..core.plan import Plan
from ..core.policy import round_half_up
from ..ranking.scopes import Scope, capacity
from .search import Budget, CostModel, check_reachable, count_macs, count_parameters, slices_of, unit_limits
from .unitsearch import select_cost, select_macs, select_measured, select_units
from .uniform import Family, FamilyCost, UnitCount, describe, expand, family_limits, family_plan_trial, family_scores

__all__ = ["select_plan", "check_budget_reachable", "measure_now", "counted_trial", "needs_trial", "exact_counts"]


def exact_counts(groups: list) -> bool:
    """Whether every group says exactly which tensor entries a unit owns (else parameter counts are first-order)."""
    return all(slices_of(g) is not None for g in groups)


def needs_trial(budget: Budget, groups: list) -> bool:
    """Whether a selection for ``budget`` is checked by counting a pruned copy (MACs, latency; parameters of inexact
    groups)."""
    return budget.kind in ("macs", "latency") or (budget.kind == "params" and not exact_counts(groups))


def measure_now(kind: str, model: nn.Module, groups_or_widths: Any, example_inputs: Any, meter: Any = None,
                reference: tuple[nn.Module, float] | None = None) -> float:
    """Units kept (sigma, channels: from groups or a name -> width mapping), parameters, MACs or (with ``meter``, a
    :class:`~prunekit.budget.latency.LatencyMeter`) seconds of one forward of the model now; with ``reference``
    (a frozen model and the seconds it measured) the seconds are that figure times the ratio of the two models
    measured side by side."""
    if kind in ("sigma", "channels"):
        if isinstance(groups_or_widths, Mapping):
            return float(sum(groups_or_widths.values()))
        return float(sum(g.width for g in groups_or_widths))
    if kind == "params":
        return float(count_parameters(model))
    if kind == "latency":
        if reference is None:
            return float(meter.measure(model, example_inputs))
        return reference[1] * meter.ratio(model, reference[0], example_inputs)
    return float(count_macs(model, example_inputs))


def check_budget_reachable(budget: Budget, groups: list, start: float, *, original: Mapping[str, int] | None = None,
                           weights: Mapping[int, float] | None = None, families: list[Family] | None = None,
                           cost: Any = None) -> None:
    """Raise :class:`~prunekit.core.policy.UnreachableTargetError` (with the most that can go) when the groups'
    limits cannot remove what ``budget`` asks of a model that measures ``start``; ``weights``: MACs per parameter;
    ``families``: uniform pruning's tied groups (a family goes no lower than its most constrained member); ``cost``:
    a latency budget's :class:`~prunekit.budget.latency.LatencyTable` (its measured floor, when it has one)."""
    limits = unit_limits(groups, original)
    if families is not None:
        flimits = family_limits(families, limits)
        most = {f.name: capacity({f.name: f.steps}, {f.name: flimits[f.name]}) for f in families}
        base = cost if cost is not None else UnitCount() if budget.kind == "channels" else CostModel(
            groups, weights if budget.kind == "macs" else None)
        check_reachable(budget, FamilyCost(base, families).removed(most), start)
        return
    most = {g.name: capacity({g.name: g.width}, {g.name: limits[g.name]}) for g in groups}
    if budget.kind == "channels":
        removable = float(sum(most.values()))
    elif cost is not None:
        floor = getattr(cost, "floor_fraction", None)  # measured with every group at its floor (a latency table)
        removable = start * floor if floor is not None else cost.removed(most)
    else:
        removable = CostModel(groups, weights if budget.kind == "macs" else None).removed(most)
    check_reachable(budget, removable, start)


def counted_trial(kind: str, model: nn.Module, groups_fn: Callable, example_inputs: Any, before: float,
                  meter: Any = None) -> Callable[[Plan], float]:
    """``fn(plan) -> what it removes`` (MACs, parameters, or latency: ``meter`` times the pruned copy side by side
    with ``model``, and ``before`` scales their ratio), on a pruned deep copy of ``model``."""

    def removed(plan: Plan) -> float:
        trial = copy.deepcopy(model)
        Plan.from_dict(plan.to_dict()).apply(trial, groups_fn(trial, example_inputs))
        if kind == "latency":
            return before * (1.0 - meter.ratio(trial, model, example_inputs))
        return before - (count_macs(trial, example_inputs) if kind == "macs" else count_parameters(trial))

    return removed


def select_plan(
        budget: Budget,
        groups: list,
        scores: Mapping[str, torch.Tensor],
        scope: Scope,
        goal: float,
        *,
        original: Mapping[str, int] | None = None,
        weights: Mapping[int, float] | None = None,
        trial: Callable[[Plan], float] | None = None,
        families: list[Family] | None = None,
        cost: Any = None,
) -> tuple[Plan, float, float]:
    """One budgeted selection: a plan removing ``goal`` of the budget's measure now (units for sigma / channels,
    parameters or MACs otherwise), the amount it removes and the tolerance (one step's worth: ``round_to`` units).

    Units are exact; parameters are exact through :class:`~prunekit.budget.search.CostModel` (``weights``: MACs per
    parameter for MACs); with ``trial`` (``fn(plan) -> amount it really removes``, counted on a pruned copy) the
    selection is corrected by counting, for MACs and for groups without ``param_slices``. Raises before anything is
    modified if ``goal`` is beyond the limits' reach. With ``families`` (:func:`~prunekit.budget.uniform.families`)
    the scope ranks the families' steps and the tolerance is one step of a family. ``cost`` replaces the parameter
    cost model (a latency budget's :class:`~prunekit.budget.latency.LatencyTable`).
    """
    limits = unit_limits(groups, original)
    if families is not None:
        return _select_families(budget, groups, scores, scope, goal, limits, weights, trial, families, cost)
    removable = {g.name for g in groups if capacity({g.name: g.width}, {g.name: limits[g.name]})}
    if budget.counts_units:
        plan = select_units(scope, scores, round_half_up(goal), limits)
        tol = max((limits[n].round_to for n in removable), default=1) - 1
        return plan, float(plan.n_removed), float(tol)
    cost = cost if cost is not None else CostModel(groups, weights)
    # one step of a group: round_to units (a policy's round_to moves a width by that many at a time)
    tol = max((cost.removed({n: limits[n].round_to}) for n in removable), default=0.0)
    if trial is None:
        plan = select_cost(scope, scores, goal, cost, limits)
        return plan, cost.removed({k: len(v) for k, v in plan.remove.items()}), tol
    if budget.kind == "latency":  # the clock's own step at the goal is the unit
        plan, done, step = select_measured(scope, scores, goal, cost, trial, limits)
        return plan, done, max(tol, step or 0.0)
    plan, done = select_macs(scope, scores, goal, cost, trial, tol, limits)
    return plan, done, tol


def _select_families(budget: Budget, groups: list, scores: Mapping[str, torch.Tensor], scope: Scope, goal: float,
                     limits: Mapping[str, Any], weights: Mapping[int, float] | None,
                     trial: Callable[[Plan], float] | None, families: list[Family], cost: Any = None
                     ) -> tuple[Plan, float, float]:
    """:func:`select_plan` over families: their steps ranked and costed as wholes, then expanded to the members."""
    widths = {g.name: g.width for g in groups}
    fscores, flimits = family_scores(families, scores), family_limits(families, limits)
    removable = [f.name for f in families if capacity({f.name: f.steps}, {f.name: flimits[f.name]})]
    base = cost if cost is not None else UnitCount() if budget.counts_units else CostModel(groups, weights)
    cost = FamilyCost(base, families)
    tol = max((cost.removed({n: flimits[n].round_to}) for n in removable), default=0.0)
    if budget.counts_units:
        goal = float(round_half_up(goal))
    ftrial = family_plan_trial(trial, families, scores, widths)
    if ftrial is None:
        fplan = select_cost(scope, fscores, goal, cost, flimits)
        done = cost.removed({k: len(v) for k, v in fplan.remove.items()})
    elif budget.kind == "latency":
        fplan, done, step = select_measured(scope, fscores, goal, cost, ftrial, flimits)
        tol = max(tol, step or 0.0)
    else:
        fplan, done = select_macs(scope, fscores, goal, cost, ftrial, tol, flimits)
    fplan.meta["target_steps"] = fplan.meta.pop("target_units", None)
    plan = expand(fplan, families, scores, widths)
    plan.meta["uniform"] = describe(families)
    return plan, done, tol
