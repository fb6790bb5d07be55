"""One prune's selection for the engine: what it must remove (:func:`step_goal`) and the plan that removes it
(:func:`select_step`), through the one selection search (:mod:`prunekit.budget.selection`).

For the ratio budgets a prune lands on a fraction of the measure the model had when the run started, so the goal is
that fraction of the start minus what earlier prunes removed; MACs are weighted per parameter and corrected by
counting a pruned copy, latency is costed by its measured lookup table and corrected by measuring a pruned copy.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from ..budget.latency import latency_table
from ..budget.search import Budget, mac_weights, unit_limits
from ..budget.selection import counted_trial, needs_trial, select_plan
from ..core.plan import Plan
from ..core.policy import round_half_up
from ..registry import PrunekitError
from .history import Measure

__all__ = ["step_goal", "select_step", "step_latency_table"]


def step_goal(budget: Budget, measure: Measure, target: float, groups: list) -> float:
    """What this prune must remove, in the budget's measure, to land on ``target``."""
    if budget.kind == "sigma":
        return float(sum(g.width for g in groups) - target)
    if budget.kind == "channels":
        kept = measure.start - round_half_up(target * measure.start)
        return float(sum(g.width for g in groups) - kept)
    return target * measure.start - (measure.start - measure.now(groups))


def step_latency_table(budget: Budget, model: nn.Module, groups_fn: Callable, example_inputs: Any, groups: list,
                       original: Mapping[str, int]):
    """A latency budget's lookup table of the model as it is now (measured, or from the cache); None otherwise."""
    if budget.kind != "latency":
        return None
    return latency_table(model, groups_fn, example_inputs, budget.meter, unit_limits(groups, original))


def select_step(budget: Budget, measure: Measure, model: nn.Module, groups_fn: Callable, example_inputs: Any,
                groups: list, scores: Mapping[str, Any], scope: Any, goal: float, *, original: Mapping[str, int],
                families: list | None) -> tuple[Plan, float, float]:
    """The plan removing ``goal`` now, what it removes and the tolerance; a scope that misses by more than one unit's
    worth is refused (a latency, measured on a clock, is recorded instead: the engine measures it after the prune)."""
    weights, trial = None, None
    if needs_trial(budget, groups):
        if budget.kind == "macs":
            before, weights = mac_weights(model, example_inputs)
        else:
            before = measure.now(groups)
        trial = counted_trial(budget.kind, model, groups_fn, example_inputs, float(before), budget.meter)
    table = step_latency_table(budget, model, groups_fn, example_inputs, groups, original)
    plan, done, tol = select_plan(budget, groups, scores, scope, goal, original=original, weights=weights,
                                  trial=trial, families=families, cost=table)
    if budget.kind != "latency" and abs(done - goal) > tol + 1e-6 * max(1.0, abs(goal)):
        name = getattr(scope, "__name__", scope)
        raise PrunekitError(f"scope {name!r} missed this prune's target: it removes {done:,.0f} of the "
                            f"{budget.kind} measure, the target is {goal:,.0f} (tolerance one unit: {tol:,.0f}); a "
                            "scope must honour target= and limits=")
    return plan, done, tol
