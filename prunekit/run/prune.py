"""Train, the engine seam: all the run phases ask of the pruning engine, in one place.

The engine (prunekit/engine.py) knows nothing of recipes or run directories. Here a recipe becomes an
:class:`~prunekit.engine.Engine` (strategy, rho, sigma_target, calibration batches, the trainer's optimizer), each
prune is logged and its plans saved, a dry run plans its prunes without training, and a resumed engine gets its
history back.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..adapters import adapter_groups
from ..engine import Engine
from ..errors import PrunekitError, RecipeError
from ..plan import Plan, replay
from ..progress import ProgressReporter
from ..recipe import Recipe
from ..schedule import compression
from ..scorers import get_scorer, needs_activations, needs_gradients
from ..strategy import Strategy
from .build import example_inputs
from .record import RunRecord
from .task import Task, calibration_batches

__all__ = ["make_engine", "engine_widths", "restore_engine", "plan_prunes", "prunable_groups"]


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
    with _strategy_keys():
        engine = Engine(model, train_fn, example_inputs=example_inputs(recipe, device), strategy=strategy, rho=s.rho,
                        sigma_target=s.sigma_target, sigma_reference=s.sigma_reference,
                        optimizer_factory=optimizer_factory, calibration=calibration, seed=recipe.train.seed)
    _check_cycles(recipe, engine.cycles)
    engine.add_callback("on_prune", lambda eng, plan: _on_prune(eng, plan, record, reporter))
    return engine


def engine_widths(engine: Engine | None) -> tuple[dict[str, int], float | None]:
    """Width of every group and the compression sigma, as the current cycle trains ({}, None without an engine)."""
    if engine is None:
        return {}, None
    widths = engine.widths()
    return widths, engine.sigma(widths)


def restore_engine(engine: Engine, state: dict[str, Any], model: nn.Module, recipe: Recipe,
                   device: torch.device) -> None:
    """A freshly built engine and model as they were when ``state`` was saved: history back, plans replayed."""
    engine.load_state_dict(state)
    replay(model, [r.plan for r in engine.history if r.plan is not None], example_inputs(recipe, device))


def prunable_groups(model: nn.Module, recipe: Recipe) -> list:
    """The groups a strategy prunes in the recipe's model (one per adapter)."""
    return adapter_groups(model, example_inputs(recipe))


def plan_prunes(recipe: Recipe, strategy: Strategy, model: nn.Module) -> dict[str, Any]:
    """What the engine would do, without training: groups, starting sigma, cycle count, widths after every prune."""
    s = recipe.strategy
    groups = prunable_groups(model, recipe)
    schedule = strategy.schedule(s.rho, s.sigma_target, s.sigma_reference)
    n0, fan = sum(g.width for g in groups), sum(g.fan for g in groups)
    with _strategy_keys():
        widths = schedule.widths(n0, fan)
        cycles = schedule.cycles(n0, fan)
    _check_cycles(recipe, cycles)
    return {"groups": len(groups), "sigma0": compression(fan, n0), "total_fan": fan, "cycles": cycles,
            "widths_after_prunes": widths[1:], "sigmas": [compression(fan, w) for w in widths],
            "scorer": str(strategy.scorer), "scope": str(strategy.scope), "mode": strategy.mode}


def _on_prune(engine: Engine, plan: Plan, record: RunRecord, reporter: ProgressReporter) -> None:
    record.save_plans(engine.plans + [plan])
    removed = plan.meta.get("removed_adapters")
    reporter.log(f"pruned {plan.n_removed} neuron{'s' if plan.n_removed != 1 else ''} -> sigma "
                 f"{engine.sigma(engine.widths()):.1f}"
                 + (f"; removed {len(removed)} adapter{'s' if len(removed) != 1 else ''}" if removed else ""))


@contextlib.contextmanager
def _strategy_keys() -> Iterator[None]:
    """Schedule errors name ``sigma_target`` / ``rho``; in a recipe they are ``strategy.*`` keys."""
    try:
        yield
    except PrunekitError as e:
        msg = str(e)
        if msg.startswith(("sigma_target:", "rho:")):
            raise RecipeError(f"strategy.{msg}") from None
        raise


def _check_cycles(recipe: Recipe, n_cycles: int) -> None:
    s = recipe.strategy
    if s.cycles is not None and s.cycles != n_cycles:
        raise RecipeError(f"strategy.cycles: {s.name} needs {n_cycles} cycles to go from the method's sigma to "
                          f"sigma_target={s.sigma_target:g} with rho={s.rho}, got {s.cycles}; remove the key or set "
                          f"it to {n_cycles}")
