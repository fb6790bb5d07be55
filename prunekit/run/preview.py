"""Look before or after: ``prunekit run --dry-run`` and ``prunekit inspect RECIPE`` build the recipe's model on random
weights (no hub, no image loaded) and show what a run would do: prune adapters, or the backbone's channels, neurons
and heads; ``prunekit inspect RUN_DIR`` shows what a run did (the width of every adapter after every cycle,
parameters, top-1, the adapters removed), read from ``metrics.jsonl``.

The model is the run's: its head has the data's classes, counted from the files' names where only they can tell
(an image folder's class folders; see :func:`~prunekit.run.task.task_size`), so the parameter counts are the run's.
The schedule is the engine's (:func:`~prunekit.run.prune.plan_prunes`): ``tests/test_plan.py`` runs the dry run and the
run of every strategy and method and compares the cycles, widths, sigmas, parameters, epochs and steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.params import count_parameters
from ..recipe.spec import Recipe
from .summary import human_bytes, short_group_name
from ..io.rundir import RunDir
from ..train.trainer import select_device
from .build import build_model
from .check import check_recipe
from .estimate import Workload, format_duration, probe_speed
from .prune import plan_prunes, prunable_groups
from .reload import recipe_of_run, run_cycles
from .task import task_size

__all__ = ["dry_run", "inspect_recipe", "GroupRow", "Inspection", "RunInspection", "inspect_run", "step_seconds"]


def dry_run(recipe: Recipe, estimate: bool = True) -> dict[str, Any]:
    """Validate and plan: the data's size, the model's parameters, the schedule (cycles x epochs, the total width and
    sigma of every cycle, or for a ``strategy.budget`` the measure at the start and what every prune removes) and,
    with ``estimate``, the run's duration from two timed training steps.

    Returns:
        What ``prunekit run --dry-run`` prints, in order; ``classes_note`` says why the classes (or image counts) are
        not known, ``estimated_duration`` is None where the data's size is unknown.
    """
    checked = check_recipe(recipe)
    task = task_size(recipe)
    model = build_model(recipe, task.num_classes, random_weights=True)
    t = recipe.train
    info: dict[str, Any] = {
        "model": recipe.model.name, "method": checked.method.name, "data": recipe.data.name,
        "classes": task.num_classes}
    if task.note:
        info["classes_note"] = task.note
    info.update(train_images=task.size.train_images, val_images=task.size.val_images,
                total_params=count_parameters(model), trainable_params=count_parameters(model, trainable_only=True),
                strategy=recipe.strategy.name)
    if checked.strategy is not None:
        if recipe.strategy.groups == "adapters":
            info["method_sigma"] = recipe.resolved.method_sigma  # what the method got; widths round up, see sigma0
        else:
            info["pruned"] = "backbone"
        info.update(plan_prunes(recipe, checked.strategy, model))
    else:
        info.update(cycles=recipe.strategy.cycles)
    steps = Workload.steps(task.size.train_images, recipe)
    info.update(epochs_per_cycle=t.epochs, epochs_total=info["cycles"] * t.epochs, steps_per_epoch=steps,
                schedule=f"{info['cycles']} cycles x {t.epochs} epochs = {info['cycles'] * t.epochs} epochs"
                         + (f" of {steps} steps" if steps is not None else ""))
    distilled = distilled_cycles(recipe, info)
    if distilled:
        d = t.distill
        info["distill"] = (f"teacher {d.teacher}, alpha {d.alpha:g}, temperature {d.temperature:g}: the last "
                           f"{distilled} cycle{'s' if distilled != 1 else ''} (after the first prune)")
    if estimate:
        info.update(_estimate(recipe, model, info["cycles"], steps, task.size.val_images, distilled))
    return info


def distilled_cycles(recipe: Recipe, info: dict[str, Any]) -> int:
    """Cycles that train with the teacher: every cycle after the first prune (the first trains before it)."""
    if recipe.train.distill.teacher is None or recipe.strategy.name == "none":
        return 0
    return max(0, info["cycles"] - 1)


def _estimate(recipe: Recipe, model, cycles: int, steps: int | None, val_images: int | None,
              distilled: int = 0) -> dict[str, Any]:
    device = select_device(recipe.train.device)
    speed = probe_speed(model, recipe, device)
    seconds = Workload(cycles, recipe.train.epochs, steps, val_images, distilled).seconds(
        speed.step_s, speed.eval_image_s, teacher_step_s=speed.teacher_step_s)
    if seconds is None:
        return {"estimated_duration": None, "estimate_note": "the data's size is unknown (see classes_note)"}
    return {"estimated_duration": f"~{format_duration(seconds)} on {device} (an estimate: {speed.step_s:.3g} s per "
                                  f"training step, {speed.how})"}


@dataclass(frozen=True)
class GroupRow:
    """One prunable group: its short name, fan m, width n, parameters and kind (adapter, neuron, channel, head)."""

    name: str
    fan: int
    width: int
    params: int
    kind: str = "adapter"


@dataclass(frozen=True)
class Inspection:
    """What ``prunekit inspect`` prints: the groups and the parameter counts of the recipe's model.

    Attributes:
        classes: the head's classes (the data's; see ``note`` when assumed).
        note: why the classes are not the data's, or None.
    """

    groups: list[GroupRow]
    total_params: int
    trainable_params: int
    classes: int
    note: str | None = None


def inspect_recipe(recipe: Recipe) -> Inspection:
    """The recipe's model on random weights: every prunable group (adapters, or the backbone's channel, neuron and
    head groups), and how much of the model trains."""
    check_recipe(recipe)
    task = task_size(recipe)
    model = build_model(recipe, task.num_classes, random_weights=True)
    rows = [GroupRow(short_group_name(g.name), g.fan, g.width,
                     sum(p.numel() for m in g.modules for p in m.parameters(recurse=False)),
                     getattr(g, "kind", "adapter"))
            for g in prunable_groups(model, recipe)]
    return Inspection(rows, count_parameters(model), count_parameters(model, trainable_only=True), task.num_classes,
                      task.note)


@dataclass(frozen=True)
class RunInspection:
    """What ``prunekit inspect RUN_DIR`` prints.

    Attributes:
        recipe: the recipe the run was trained with.
        cycles: the cycle records of ``metrics.jsonl``, in order.
        adapters: every adapter's short name (``blocks.0.attn``), in model order (empty: the run prunes nothing).
        widths: ``widths[i][k]``: neurons of adapter i while cycle k trained (0: removed).
        removed: cycle -> the adapters that are gone when it trains (removed by the prune before it).
        file_sizes: each cycle's trained file, in words (``22.3 KB``; ``-`` when none was saved).
        finished: ``DONE`` is written.
    """

    recipe: Recipe
    cycles: list[dict[str, Any]]
    adapters: list[str]
    widths: list[list[int]]
    removed: dict[int, list[str]]
    file_sizes: list[str]
    finished: bool


def inspect_run(run_dir: str | Path) -> RunInspection:
    """The structure of a run directory after every cycle, from its records; nothing is built or loaded."""
    rd = RunDir(run_dir)
    recipe = recipe_of_run(rd)
    cycles = run_cycles(rd)
    groups = list(cycles[0].get("widths") or {})
    widths = [[(c.get("widths") or {}).get(g, 0) for c in cycles] for g in groups]
    removed: dict[int, list[str]] = {}
    for k in range(1, len(cycles)):
        gone = [short_group_name(g) for g, w in zip(groups, widths) if w[k - 1] and not w[k]]
        if gone:
            removed[cycles[k]["cycle"]] = gone
    return RunInspection(recipe, cycles, [short_group_name(g) for g in groups], widths, removed,
                         [human_bytes(c.get("adapter_bytes")) for c in cycles], rd.finished)


def step_seconds(recipe: Recipe) -> tuple[float, float]:
    """Seconds per training step and per evaluation step (``train.eval_batch`` images) of the recipe's model on this
    machine, measured now on random images (:func:`~prunekit.run.estimate.probe_speed`): what an estimate of a run's
    time multiplies."""
    model = build_model(recipe, task_size(recipe).num_classes, random_weights=True)
    speed = probe_speed(model, recipe, select_device(recipe.train.device))
    return speed.step_s, speed.eval_image_s * recipe.train.eval_batch
