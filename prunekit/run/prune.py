"""Train, the engine seam: all the run phases ask of the pruning engine, in one place.

The engine (prunekit/engine/iterative.py) knows nothing of recipes or run directories. Here a recipe becomes an
:class:`~prunekit.engine.iterative.Engine` (strategy, rho, sigma_target, calibration batches, the trainer's optimizer),
each prune is logged and its plans saved, a dry run plans its prunes without training, and a resumed engine gets its
history back.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..adapters.groups import adapter_groups
from ..budget.search import Budget
from ..groups.channels import BackboneGroups, backbone_groups
from ..engine.iterative import Engine
from ..errors import PrunekitError, ConfigError
from ..core.plan import Plan
from ..engine.sources import replay
from .progress import ProgressReporter
from ..recipe.spec import Recipe
from ..engine.schedule import compression
from ..ranking.scorers import get_scorer, needs_activations, needs_gradients
from ..engine.strategy import Strategy
from .build import example_inputs
from .record import RunRecord
from .task import Task, calibration_batches
from .teacher import recipe_distill, save_teacher

__all__ = ["make_engine", "engine_widths", "restore_engine", "plan_prunes", "prunable_groups", "recipe_budget",
           "recipe_groups_fn"]


def make_engine(recipe: Recipe, strategy: Strategy, model: nn.Module, train_fn: Callable, task: Task,
                optimizer_factory: Callable, device: torch.device, record: RunRecord,
                reporter: ProgressReporter) -> Engine:
    """The engine that trains ``model`` with ``train_fn`` and prunes it as the recipe's strategy says.

    Everything the engine checks (groups, a reachable sigma_target, the cycle count against ``strategy.cycles``) is
    checked here, before the run directory is created.
    """
    s = recipe.strategy
    scorer = get_scorer(strategy.scorer)
    calibration = None
    if needs_activations(scorer) or needs_gradients(scorer):
        calibration = calibration_batches(task, recipe, device)
    with _strategy_keys(recipe):
        engine = Engine(model, train_fn, example_inputs=example_inputs(recipe, device), strategy=strategy, rho=s.rho,
                        sigma_target=s.sigma_target, sigma_reference=recipe.resolved.sigma_reference,
                        optimizer_factory=optimizer_factory, calibration=calibration, seed=recipe.train.seed,
                        budget=recipe_budget(recipe), groups_fn=recipe_groups_fn(recipe),
                        distill=recipe_distill(recipe, task.bundle.num_classes))
    _check_cycles(recipe, engine.cycles)
    engine.add_callback("on_prune", lambda eng, plan: save_teacher(eng, recipe, record))
    engine.add_callback("on_prune", lambda eng, plan: _on_prune(eng, plan, record, reporter, recipe))
    return engine


def recipe_budget(recipe: Recipe) -> Budget:
    """``strategy.budget`` as a :class:`~prunekit.budget.search.Budget`; the adapters' ``sigma_target`` when it sets
    none."""
    b, s = recipe.strategy.budget, recipe.strategy
    return Budget.sigma(s.sigma_target) if b.kind is None else Budget(b.kind, b.value)


def recipe_groups_fn(recipe: Recipe) -> str | BackboneGroups:
    """The engine's ``groups_fn``: ``'adapters'``, or the backbone's groups as ``strategy.backbone`` configures them."""
    s = recipe.strategy
    if s.groups == "adapters":
        return "adapters"
    b = s.backbone
    with _strategy_keys(recipe):
        return backbone_groups(ignore=b.ignore, min_width=b.min_width, round_to=b.round_to,
                               max_layer_ratio=b.max_layer_ratio, heads=b.heads, uniform=b.uniform)


def engine_widths(engine: Engine | None, recipe: Recipe) -> tuple[dict[str, int], float | None]:
    """Width of every group and, for adapters, the compression sigma, as the current cycle trains ({}, None without
    an engine)."""
    if engine is None:
        return {}, None
    widths = engine.widths()
    return widths, engine.sigma(widths) if recipe.strategy.groups == "adapters" else None


def restore_engine(engine: Engine, state: dict[str, Any], model: nn.Module, recipe: Recipe,
                   device: torch.device) -> None:
    """A freshly built engine and model as they were when ``state`` was saved: history back, plans replayed."""
    engine.load_state_dict(state)
    replay(model, [r.plan for r in engine.history if r.plan is not None], example_inputs(recipe, device))


def prunable_groups(model: nn.Module, recipe: Recipe) -> list:
    """The groups a strategy prunes in the recipe's model (one per adapter, or the backbone's channel, neuron and
    head groups)."""
    groups_fn = recipe_groups_fn(recipe)
    if groups_fn == "adapters":
        return adapter_groups(model, example_inputs(recipe))
    with _strategy_keys(recipe):
        return groups_fn(model, example_inputs(recipe))


def plan_prunes(recipe: Recipe, strategy: Strategy, model: nn.Module) -> dict[str, Any]:
    """What the engine will do, without training: groups, the start, cycle count, what every cycle trains at.

    For the adapters' sigma: starting sigma, and the total width and sigma each cycle trains at (the run's
    ``metrics.jsonl`` records the same per cycle). For a ``strategy.budget``: the engine is built as a run builds it
    (groups traced, the budget checked reachable) and reports the measure at the start and the fraction removed, and
    what is left, after every prune.
    """
    s = recipe.strategy
    if s.budget.kind is not None:
        return _plan_budget(recipe, strategy, model)
    groups = prunable_groups(model, recipe)
    schedule = strategy.schedule(s.rho, s.sigma_target, recipe.resolved.sigma_reference)
    n0, fan = sum(g.width for g in groups), sum(g.fan for g in groups)
    with _strategy_keys(recipe):
        widths = schedule.widths(n0, fan)
        cycles = schedule.cycles(n0, fan)
    _check_cycles(recipe, cycles)
    per_cycle = widths[:cycles] + [widths[-1]] * (cycles - len(widths))  # one-shot: the last width from cycle 1 on
    info = {"groups": len(groups), "total_fan": fan, "sigma0": compression(fan, n0), "cycles": cycles,
            "widths_per_cycle": per_cycle, "sigma_per_cycle": [compression(fan, w) for w in per_cycle],
            "scorer": str(strategy.scorer), "scope": str(strategy.scope), "mode": strategy.mode}
    if strategy.mode == "oneshot":
        info["sigma_reference"] = schedule.reference(n0, fan)
    return info


def _plan_budget(recipe: Recipe, strategy: Strategy, model: nn.Module) -> dict[str, Any]:
    s, budget = recipe.strategy, recipe_budget(recipe)
    with _strategy_keys(recipe):
        engine = Engine(model, lambda *_: {}, example_inputs=example_inputs(recipe), strategy=strategy, rho=s.rho,
                        sigma_target=s.sigma_target, sigma_reference=recipe.resolved.sigma_reference, budget=budget,
                        groups_fn=recipe_groups_fn(recipe), calibration=(), seed=recipe.train.seed)
    _check_cycles(recipe, engine.cycles)
    groups = engine.groups()
    kinds = Counter(getattr(g, "kind", "group") for g in groups)
    start = engine.measure.start
    removed = [engine.prune_after[c] for c in sorted(engine.prune_after)]
    # a latency is measured now, on this machine: in milliseconds
    unit, scale = ("latency_ms", 1e3) if budget.kind == "latency" else (budget.kind, 1.0)
    info: dict[str, Any] = {
        "groups": len(groups), "group_kinds": ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())),
        "units": sum(g.width for g in groups), "budget": f"{budget.kind} {budget.value:g}",
        f"{unit}_start": round(scale * start, 3) if scale != 1 else int(start), "cycles": engine.cycles,
        "removed_after_prunes": removed,
        f"{unit}_after_prunes": [round(scale * start * (1 - r), 3 if scale != 1 else None) for r in removed]}
    excluded = getattr(engine.groups_fn, "excluded", None)
    if excluded:
        info["groups_left_out"] = len(excluded)
    info.update(scorer=str(strategy.scorer), scope=str(strategy.scope), mode=strategy.mode)
    return info


def _on_prune(engine: Engine, plan: Plan, record: RunRecord, reporter: ProgressReporter, recipe: Recipe) -> None:
    record.save_plans(engine.plans + [plan])
    if recipe.strategy.budget.kind is not None:
        b = plan.meta["budget"]
        reporter.log(f"pruned {plan.n_removed} units -> {100 * b['reached']:.1f} % of the {b['kind']} removed "
                     f"(target {100 * b['target']:.1f} %)")
        return
    removed = plan.meta.get("removed_adapters")
    reporter.log(f"pruned {plan.n_removed} neuron{'s' if plan.n_removed != 1 else ''} -> sigma "
                 f"{engine.sigma(engine.widths()):.1f}"
                 + (f"; removed {len(removed)} adapter{'s' if len(removed) != 1 else ''}" if removed else ""))


_KEYS = {"sigma_target:": "strategy.", "rho:": "strategy.", "sigma_reference:": "strategy.",
         "ignore:": "strategy.backbone.", "min_width:": "strategy.backbone.", "round_to:": "strategy.backbone.",
         "max_layer_ratio:": "strategy.backbone."}


@contextlib.contextmanager
def _strategy_keys(recipe: Recipe) -> Iterator[None]:
    """Errors of the schedule, the budget and the backbone's groups name their arguments (``rho``, ``ratio``,
    ``ignore`` ...); in a recipe they are ``strategy.*`` keys."""
    try:
        yield
    except PrunekitError as e:
        msg = str(e)
        if msg.startswith("ratio:") and recipe.strategy.budget.kind is not None:
            raise ConfigError(f"strategy.budget.{recipe.strategy.budget.kind}:{msg[len('ratio:'):]}") from None
        prefix = next((p for p in _KEYS if msg.startswith(p)), None)
        if prefix is not None:
            raise ConfigError(f"{_KEYS[prefix]}{msg}") from None
        raise


def _check_cycles(recipe: Recipe, n_cycles: int) -> None:
    s = recipe.strategy
    if s.cycles is None or s.cycles == n_cycles:
        return
    goal = (f"to go from the method's sigma to sigma_target={s.sigma_target:g}" if s.budget.kind is None else
            f"to remove {s.budget.value:g} of the model's {s.budget.kind}")
    raise ConfigError(f"strategy.cycles: {s.name} needs {n_cycles} cycles {goal} with rho={s.rho}, got {s.cycles}; "
                      f"remove the key or set it to {n_cycles}")
