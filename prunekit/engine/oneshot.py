"""Prune any model in one call: :func:`prune`.

::

    import timm, torch, prunekit as pk
    model = timm.create_model("resnet50", num_classes=10)
    plan = pk.prune(model, torch.randn(1, 3, 64, 64), ratio=0.5, target="params")   # half the parameters gone
    plan.meta["params_before"], plan.meta["params_after"]

``prune`` finds the model's channel / neuron groups (and attention heads, where ``prunekit.groups.heads`` is present)
with :func:`~prunekit.groups.channels.backbone_groups`, scores every unit, selects with a scope so that the budget is
met within one unit's cost (:mod:`prunekit.budget.search`) and slices the model in place. The returned
:class:`~prunekit.core.plan.Plan` records the budget, what was reached, parameters and MACs before and after, the groups
left out and why, and how to find the groups again (``meta['groups']``), so :func:`~prunekit.io.pruned.save_pruned` can
replay it on a fresh model.

The iterative version (prune, fine-tune, prune ...) is :class:`~prunekit.engine.iterative.Engine` with
``budget=Budget.params(0.5)`` and ``groups_fn=backbone_groups(...)``.

Safety: everything that can be checked is checked before the model changes (names, ratio, reachability, tracing,
calibration). The model is then copied; if the forward after slicing fails or its output shape changes, the model is
restored from the copy (in place: the same module objects) and :class:`~prunekit.groups.channels.UnsupportedModelError`
is raised.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..budget.search import (
    Budget, count_forward, count_parameters, forward_count, unit_limits,
)
from ..groups.channels import backbone_groups
from ..core.group import UnsupportedModelError
from ..budget.selection import check_budget_reachable, counted_trial, measure_now, needs_trial, select_plan
from .sources import describe_groups_fn
from ..budget.latency import latency_table
from ..budget.meter import LatencyMeter
from ..budget.opcount import OpCounter
from ..budget.uniform import families
from ..core.plan import Plan, input_spec, record_applied
from ..core.policy import UnreachableTargetError, removal_steps, round_half_up
from ..registry import PrunekitError
from ..errors import did_you_mean
from ..ranking.scopes import get_scope
from ..core.undo import output_shapes, restore, snapshot
from ..core.walk import DEFAULT_BUDGET, DiscoveryBudget
from ..ranking.scorers import get_scorer, needs_activations, needs_gradients, score_groups
from ..ranking.calibration import gather_stats

__all__ = ["prune"]

TARGETS = ("params", "macs", "channels", "latency")
ATTEMPTS = 4  # the first, optimistic one, then one per round of groups found to break the model


def _select(budget: Budget, model: nn.Module, groups: list, groups_fn: Callable, score_fn: Callable,
            scope_fn: Callable, start: float, goal: float, weights: dict, example_inputs: Any,
            calibration: Iterable | None, loss_fn: Callable | None, seed: int = 0) -> tuple[Plan, float]:
    """Reachability check, scores, budgeted selection; returns the plan and its tolerance (one unit's worth, one
    family step's under ``uniform``)."""
    target = budget.kind
    fams = families(model, groups) if groups_fn.uniform else None
    table = None
    if target == "latency":  # the measured lookup table: the latency budget's cost model
        table = latency_table(model, groups_fn, example_inputs, budget.meter, unit_limits(groups))
    check_budget_reachable(budget, groups, start, weights=weights, families=fams, cost=table)
    stats = gather_stats(model, groups, score_fn, calibration, generator=torch.Generator().manual_seed(seed),
                         loss_fn=loss_fn)
    scores = score_groups(groups, score_fn, stats)
    trial = counted_trial(target, model, groups_fn, example_inputs, start, budget.meter) \
        if needs_trial(budget, groups) else None
    plan, done, tol = select_plan(budget, groups, scores, scope_fn, goal,
                                  weights=weights if target == "macs" else None, trial=trial, families=fams,
                                  cost=table)
    if table is not None:
        plan.meta["planned"] = done  # what the pruned copy measured (prune() compares it with the model's own)
    if target == "params" and trial is not None:  # heads etc. without param_slices: a unit's cost is first-order
        limits = unit_limits(groups)
        removable = [g for g in groups if removal_steps(g.width, *limits[g.name])[-1]]
        tol = max(tol, max((g.unit_params() for g in removable), default=0))
    return plan, tol


def prune(
        model: nn.Module,
        example_inputs: Any,
        *,
        ratio: float,
        target: str = "params",
        scorer: str | Callable = "l1",
        scope: str | Callable = "global",
        ignore: Iterable[str | nn.Module] | None = None,
        round_to: int | None = None,
        max_layer_ratio: float | None = None,
        heads: bool = True,
        calibration: Iterable | None = None,
        min_width: int = 1,
        loss_fn: Callable | None = None,
        forward_fn: Callable | None = None,
        embeddings: bool = False,
        discovery: DiscoveryBudget = DEFAULT_BUDGET,
        uniform: bool = False,
        latency: LatencyMeter | None = None,
        seed: int = 0,
) -> Plan:
    """Remove ``ratio`` of the model's ``target`` measure, in place; returns the applied plan.

    Args:
        model: any model torch-pruning can trace (timm, torchvision, your own).
        example_inputs: a batch the model accepts; MACs are counted on it.
        ratio: fraction of the *whole model's* parameters / MACs / measured latency, or of the prunable units, to
            remove (0.5: half).
        target: ``'params'``, ``'macs'``, ``'channels'`` or ``'latency'`` (:mod:`prunekit.budget.latency`: the
            forward time measured on the device the model is on).
        scorer: registered scorer name (``'l1'``, ``'l2'``, ``'l1_mean'``, ``'lamp'``, ``'taylor'`` ...) or callable.
        scope: ``'global'`` (one ranking; layers compete) or ``'local'`` (the same fraction of every group).
        ignore: modules, names or glob patterns whose output channels must not be pruned (the classifier and
            anything feeding the output are never pruned anyway).
        round_to: keep every group's width a multiple of this.
        max_layer_ratio: the most one group may lose, as a fraction of its width.
        heads: prune whole attention heads too (when ``prunekit.groups.heads`` is available).
        calibration: batches for activation scorers, ``(inputs, targets)`` batches for ``'taylor'``.
        min_width: units every group keeps.
        loss_fn: ``loss_fn(outputs, targets)`` for gradient scorers (default cross-entropy).
        forward_fn: ``fn(model, example_inputs)`` for models that need more than ``model(x)`` (a dict of inputs is
            ``model(**x)`` already).
        embeddings: also prune the width of ``nn.Embedding`` s (a language model's hidden size); off by default.
        discovery: how far one group's walk of the traced graph may go (:class:`~prunekit.core.walk.DiscoveryBudget`);
            a group past it is left out, named in ``plan.meta['excluded']``.
        uniform: every repeated block keeps the same width (the same heads per attention, key/value heads per
            decoder layer, MLP width per block), so the model's config or constructor can describe the result
            (:mod:`prunekit.budget.uniform`: the families, and how units are ranked); the budget is met within one
            step of a family. ``plan.meta['uniform']`` names the tied families.
        latency: how ``target='latency'`` measures (:class:`~prunekit.budget.latency.LatencyMeter`: batch size,
            threads, repeats, a clock); default: the example's batch, this process's threads, the wall clock.
        seed: seeds random scorers (``'random'``).

    Returns:
        The plan, with ``meta`` holding ``budget``, ``reached``, ``params_before`` / ``params_after``,
        ``macs_before`` / ``macs_after``, ``excluded`` (groups left out, with reasons) and ``groups`` (how to find
        them again); for latency also ``latency`` (milliseconds before, the target, what the table and the pruned
        copy predicted, and what the pruned model measures: the budget's ``reached`` is the measured one).

    Raises:
        UnreachableTargetError: the prunable groups cannot reach ``ratio`` (the message says the most they can).
        UnsupportedModelError: the model cannot be traced, has no prunable group, or broke when sliced (restored).
    """
    if target not in TARGETS:
        raise PrunekitError(f"target: unknown {target!r};{did_you_mean(str(target), TARGETS)} allowed: "
                            f"{', '.join(TARGETS)}")
    if latency is not None and target != "latency":
        raise PrunekitError(f"latency: a LatencyMeter applies to target='latency', got target={target!r}")
    budget = Budget.latency(ratio, meter=latency) if target == "latency" else Budget(target, ratio)
    score_fn, scope_fn = get_scorer(scorer), get_scope(scope)
    label = scorer if isinstance(scorer, str) else getattr(score_fn, "__name__", str(scorer))
    if (needs_activations(score_fn) or needs_gradients(score_fn)) and calibration is None:
        raise PrunekitError(f"scorer {label!r} needs calibration= batches "
                            f"({'(inputs, targets) pairs' if needs_gradients(score_fn) else 'inputs'})")
    # Optimistic: most models prune cleanly, so the forward probe (a pruned copy) only runs when an attempt breaks
    # the model: the model is restored, the groups whose removals break it are found on a copy and left out, and
    # the selection is made again (a layer may only break at some widths, so the probe replays the failed plan).
    groups_fn = backbone_groups(ignore=ignore, min_width=min_width, round_to=round_to,
                                max_layer_ratio=max_layer_ratio, heads=heads, verify=False, forward_fn=forward_fn,
                                embeddings=embeddings, discovery=discovery, uniform=uniform)
    params_before = count_parameters(model)
    snap = snapshot(model)  # the undo, should slicing break the model
    clock_ref = budget.meter.reference(model) if target == "latency" else None  # the clock's side-by-side copy
    for attempt in range(ATTEMPTS):
        if attempt == 0:  # the trace's forward also counts the MACs, MACs per parameter and output shapes
            with OpCounter(model) as ops:
                groups = groups_fn(model, example_inputs)
            before = forward_count(model, ops.macs, ops.layer_macs, ops.output_shapes) if ops.forwards == 1 \
                else count_forward(model, example_inputs, forward_fn)
            macs_before, weights, reference = before.macs, before.weights, before.output_shapes
            if forward_fn is not None:  # the counter saw the model's own outputs; compare what forward_fn returns
                reference = output_shapes(model, example_inputs, forward_fn)
        else:
            groups = groups_fn(model, example_inputs)
        if not groups:
            why = "; ".join(f"{k}: {v}" for k, v in list(groups_fn.excluded.items())[:4])
            raise UnsupportedModelError(f"{type(model).__name__} has no prunable group" + (f" ({why})" if why else ""))
        start = {"params": float(params_before), "macs": float(macs_before)}.get(target) or measure_now(
            target, model, groups, example_inputs, budget.meter)
        goal = budget.value * start if target != "channels" else float(round_half_up(budget.value * start))
        plan, sliced = None, False
        try:
            plan, tol = _select(budget, model, groups, groups_fn, score_fn, scope_fn, start, goal, weights,
                                example_inputs, calibration, loss_fn, seed)
            sliced = True
            plan.apply(model, groups)
            after = count_forward(model, example_inputs, forward_fn)
            shapes = after.output_shapes
            if shapes != reference:
                raise RuntimeError(f"output shapes changed from {reference} to {shapes}")
            break
        except (UnsupportedModelError, UnreachableTargetError):
            if sliced:
                restore(model, snap)
            raise
        except Exception as e:  # noqa: BLE001 - restore, then find the groups that break the model by name
            if sliced:  # parameters are now the snapshot's (copies): only when the model really changed
                restore(model, snap)
            broken = {} if attempt + 1 == ATTEMPTS else groups_fn.exclude_breaking(
                model, example_inputs, None if plan is None else plan.remove)
            if not broken:
                raise UnsupportedModelError(f"pruning {type(model).__name__} broke it ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0][:300]}); the model was restored unchanged") from e
    params_after = count_parameters(model)
    macs_after = after.macs
    now = {"params": float(params_after), "macs": float(macs_after)}.get(target)
    if target == "latency":  # measured again on the pruned model itself: a clock, so no exact check
        now = measure_now(target, model, groups, example_inputs, budget.meter, (clock_ref, start))
        plan.meta["latency"] = {"before_ms": 1e3 * start, "target_ms": 1e3 * (start - goal),
                                "planned_ms": 1e3 * (start - plan.meta.pop("planned", goal)),
                                "measured_ms": 1e3 * now, "step_ms": 1e3 * tol, **budget.meter.describe()}
    elif now is None:
        now = start - plan.n_removed
    removed = start - now
    if target != "latency" and abs(removed - goal) > tol + 1e-6 * goal:
        restore(model, snap)
        raise PrunekitError(f"prune: removed {removed:,.0f} of {start:,.0f} {target}, the target was {goal:,.0f} "
                            f"(tolerance one unit: {tol:,.0f}); the model was restored unchanged")
    plan.meta.update(
        scorer=label, budget={"kind": target, "ratio": ratio, "goal": goal, "tolerance": tol, "reached":
                              removed / start if start else 0.0},
        reached=removed / start if start else 0.0, params_before=params_before, params_after=params_after,
        macs_before=macs_before, macs_after=macs_after, excluded=dict(groups_fn.excluded),
        units_before={g.name: g.width for g in groups},
    )
    source = describe_groups_fn(groups_fn)
    if source is not None:
        plan.meta["groups"] = source
    plan.meta["example_inputs"] = input_spec(example_inputs)
    record_applied(model, plan)
    return plan

