"""Look before or after: ``prunekit run --dry-run`` and ``prunekit inspect RECIPE`` build the recipe's model on random
weights (no data, no hub) and show what a run would prune; ``prunekit inspect RUN_DIR`` shows what a run did (the
width of every adapter after every cycle, parameters, top-1, the adapters removed), read from ``metrics.jsonl``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..params import count_parameters
from ..recipe import Recipe
from ..report import human_bytes, short_group_name
from ..rundir import RunDir
from .build import build_model, preview_classes
from .check import check_recipe
from .prune import plan_prunes, prunable_groups
from .reload import recipe_of_run, run_cycles

__all__ = ["dry_run", "inspect_recipe", "GroupRow", "Inspection", "RunInspection", "inspect_run"]


def dry_run(recipe: Recipe) -> dict[str, Any]:
    """Validate and plan: the model with random weights, its groups and the schedule (cycles, widths, sigmas)."""
    checked = check_recipe(recipe)
    n_classes = preview_classes(recipe)
    model = build_model(recipe, n_classes, random_weights=True)
    info: dict[str, Any] = {
        "model": recipe.model.name, "method": checked.method.name, "classes": n_classes,
        "total_params": count_parameters(model), "trainable_params": count_parameters(model, trainable_only=True),
        "strategy": recipe.strategy.name, "data": recipe.data.name,
    }
    if checked.strategy is not None:
        info["method_sigma"] = recipe.resolved.method_sigma  # what the method got; widths round up, see sigma0
        info.update(plan_prunes(recipe, checked.strategy, model))
    else:
        info.update(cycles=recipe.strategy.cycles)
    info["epochs_total"] = info["cycles"] * recipe.train.epochs
    return info


@dataclass(frozen=True)
class GroupRow:
    """One prunable group: its short name, fan m, width n and parameters."""

    name: str
    fan: int
    width: int
    params: int


@dataclass(frozen=True)
class Inspection:
    """What ``prunekit inspect`` prints: the groups and the parameter counts of the recipe's model."""

    groups: list[GroupRow]
    total_params: int
    trainable_params: int


def inspect_recipe(recipe: Recipe) -> Inspection:
    """The recipe's model on random weights: every prunable group, and how much of the model trains."""
    check_recipe(recipe)
    model = build_model(recipe, preview_classes(recipe), random_weights=True)
    rows = [GroupRow(short_group_name(g.name), g.fan, g.width,
                     sum(p.numel() for m in g.modules for p in m.parameters(recurse=False)))
            for g in prunable_groups(model, recipe)]
    return Inspection(rows, count_parameters(model), count_parameters(model, trainable_only=True))


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


def step_seconds(recipe: Recipe, steps: int = 3) -> tuple[float, float]:
    """Seconds per training step and per evaluation step of the recipe's model on this machine, measured now on
    random images (random weights, ``steps`` steps after one warm-up): what an estimate of a run's time multiplies."""
    import time

    import torch

    model = build_model(recipe, preview_classes(recipe), random_weights=True)
    t = recipe.train
    x = torch.randn(t.batch_size, recipe.model.in_chans, recipe.model.img_size, recipe.model.img_size)
    y = torch.zeros(t.batch_size, dtype=torch.long)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr)
    model.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    model.eval()
    xe = torch.randn(t.eval_batch, *x.shape[1:])
    evals = []
    with torch.no_grad():
        for _ in range(steps + 1):
            start = time.perf_counter()
            model(xe)
            evals.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2], sorted(evals[1:])[len(evals[1:]) // 2]
