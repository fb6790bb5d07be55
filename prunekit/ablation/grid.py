"""``prunekit ablate``: a grid of strategies x sigma targets x seeds (+ baselines), as in the paper's Tables 3, 5, 6,
on one task or on several (the paper's multi-task setting, Table 2).

An ablation file names a base recipe and the grid::

    name: ablation_offline
    base: quickstart.yaml              # every cell is this recipe plus overrides
    set: [train.epochs=3]              # overrides for every cell
    tasks:                             # optional: the grid runs once per task, from the same backbone
      - {label: digits, set: [data.name=digits]}
      - {label: fashion_heldout, set: [data.name=fashion_mnist, "data.classes=[5, 6, 7, 8, 9]"]}
    grid:
      strategies: [vanilla_l1, local_l1, tina, ...]
      sigma_targets: [64, 128, 256, 512]
      seeds: [0, 1, 2]
      sigma0: 32                       # where iterative strategies start (method.sigma)
      vanilla_adapters: true           # the "Vanilla adapters" row: adapters injected at sigma, no pruning
      oneshot_sigma_targets: [128, 512]  # optional: the columns one-shot strategies run (default: sigma_targets)
      vanilla_sigma_targets: [64, 128]   # optional: the columns of the vanilla row (default: sigma_targets)
    baselines:                         # parameter-matched rows (Tables 1-2): trained as long as the longest cell
      - {label: LoRA r=1, method: {name: lora, rank: 1}}
    cluster: {launcher: slurm, partition: gpu, gpus_per_job: 1}   # optional: a job per cell (cluster.py)

Every cell gets the same training budget as the iterative run to its sigma: one-shot cells start at
sigma * (1 - rho) and train as many cycles (``strategy.sigma_reference = sigma0``), vanilla adapters train that many
cycles too. An iterative strategy's run to the largest sigma passes through every smaller target after the same
cycles, with the same data order and the same prunes (runs are deterministic), so its per-cycle results fill the
smaller cells; ``tests/test_ablation.py`` checks that a shorter run equals the prefix of a longer one. One-shot
strategies and vanilla adapters need one run per column, so a grid can give them fewer columns
(``oneshot_sigma_targets``, ``vanilla_sigma_targets``); their other cells are left empty ("-").

A task's overrides come after ``set`` and before the cell's own; its cells are named ``<task>__<cell>``. The tables
(``tables.py``) then hold every task's rows and their mean over tasks, and the pretrained backbone's own
top-1 on its pretraining task when the base recipe's checkpoint says or ``model.pretrain`` can re-measure it
(``run/backbone_result.py``).

Cells run in their own run directories under ``OUT/runs``; a cell whose directory holds a finished run is not run
again (resume), and ``--jobs N`` runs cells in N processes. ``--dry-run`` (:func:`plan_ablation`) checks every cell
and every task's data, lists every cell with its length and estimates the grid's time from a few steps measured on
the spot, without training or writing anything. The file is read in ``spec.py``, the tables written in
``tables.py``, the plots drawn in ``plots.py``; ``cluster.py`` submits the cells as SLURM jobs instead (``jobs.py``).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .spec import AblationSpec, is_ablation_file, load_ablation
from .tables import MEAN, VANILLA, aggregate, write_tables
from ..config import parse_section
from ..errors import ConfigError
from ..recipe.spec import Recipe, load_recipe, read_yaml, recipe_to_dict
from ..registry import PrunekitError
from ..io.rundir import RunDir
from ..engine.schedule import num_prunes
from ..engine.strategy import get_strategy

__all__ = ["AblationSpec", "Cell", "plan_cells", "plan_ablation", "run_ablation", "load_ablation", "is_ablation_file",
           "summarize"]


@dataclass
class Cell:
    """One training run of a task; it fills ``provides`` = [(row, sigma, cycle index)] with its per-cycle results."""

    run_id: str
    row: str
    seed: int
    overrides: list[str]
    provides: list[tuple[str, float, int]]
    task: str = ""


def _fmt(x: float) -> str:
    return f"{x:g}"


def plan_cells(spec: AblationSpec, rho: float) -> list[Cell]:
    """Every run the grid needs, task by task (see the module docstring for the budget rules)."""
    return [cell for task in spec.task_labels for cell in _task_cells(spec, task, rho)]


def _task_cells(spec: AblationSpec, task: str, rho: float) -> list[Cell]:
    g = spec.grid
    sig = sorted(g.sigma_targets)
    prefix = f"{task}__" if task else ""
    cells = []

    def add(run_id: str, row: str, seed: int, overrides: list[str], provides: list[tuple[str, float, int]]):
        cells.append(Cell(prefix + run_id, row, seed, overrides, provides, task))

    for seed in g.seeds:
        common = spec.task_overrides(task) + [f"train.seed={seed}", f"strategy.sigma_reference={g.sigma0}"]
        for name in g.strategies:
            strat = get_strategy(name)
            if strat.mode == "iterative" and math.isclose(rho, 0.5):
                # one run to the largest target; cycle k sits at sigma0 * 2^k
                top = sig[-1]
                add(f"{name}__s{_fmt(top)}__seed{seed}", name, seed,
                    common + [f"method.sigma={g.sigma0}", f"strategy.name={name}", f"strategy.sigma_target={top}"],
                    [(name, s, num_prunes(g.sigma0, s, rho)) for s in sig])
                continue
            for s in sorted(g.oneshot_sigma_targets if strat.mode == "oneshot" else sig):
                add(f"{name}__s{_fmt(s)}__seed{seed}", name, seed,
                    common + [f"method.sigma={g.sigma0}", f"strategy.name={name}", f"strategy.sigma_target={s}"],
                    [(name, s, num_prunes(g.sigma0, s, rho))])
        if g.vanilla_adapters:
            for s in sorted(g.vanilla_sigma_targets):
                cycles = num_prunes(g.sigma0, s, rho) + 1
                add(f"{VANILLA}__s{_fmt(s)}__seed{seed}", VANILLA, seed,
                    common + ["strategy.name=none", f"strategy.cycles={cycles}", "method={name: adapters}",
                              f"method.sigma={s}"], [(VANILLA, s, cycles - 1)])
        longest = num_prunes(g.sigma0, sig[-1], rho) + 1
        for b in spec.baselines:
            method = yaml.safe_dump(b.method, default_flow_style=True).strip()
            add(f"baseline_{_slug(b.label)}__seed{seed}", b.label, seed,
                common + ["strategy.name=none", f"strategy.cycles={longest}", f"method={method}"],
                [(b.label, math.nan, longest - 1)])
    return cells


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _finished_as_planned(run_dir: Path, base: str, overrides: list[str]) -> bool:
    """A finished run whose recipe is the one the grid asks for now (a changed grid re-runs the cell).

    Both sides go through the current schema, so a key added to prunekit since (with its default) does not make a
    finished cell stale.
    """
    return (run_dir / RunDir.DONE).exists() and _started_as_planned(run_dir, base, overrides)


def _started_as_planned(run_dir: Path, base: str, overrides: list[str]) -> bool:
    """A run directory (finished or not) whose recipe is the one the grid asks for now."""
    try:
        done = recipe_to_dict(parse_section(Recipe, read_yaml(run_dir / "recipe.resolved.yaml")), resolved=False)
    except PrunekitError:  # unreadable or stale: the cell runs again
        return False
    done.pop("description", None)  # free text (it says which --set overrides a recipe was run with): not a result
    want = recipe_to_dict(load_recipe(base, overrides), resolved=False)  # `resolved` follows from the rest
    want.pop("description", None)
    return done == want


def _run_cell(base: str, overrides: list[str], out: str, threads: int) -> str:
    """Worker: run one cell quietly (also used in-process when jobs == 1)."""
    import torch

    from ..run.progress import ProgressReporter, make_console
    from ..run import run_recipe

    if threads:
        torch.set_num_threads(threads)
    recipe = load_recipe(base, overrides)
    run_recipe(recipe, out=out, overwrite=True, reporter=ProgressReporter(console=make_console(quiet=True)))
    return out


def _check_tasks(spec: AblationSpec, base: str, data: bool = True) -> list[Recipe]:
    """Every task's recipe, its names resolved and (``data``) its data loaded once (a bad task fails before any cell
    runs)."""
    from ..run import check_recipe
    from ..run.task import load_bundle

    recipes = []
    for task in spec.task_labels:
        where = f"tasks[{spec.task_labels.index(task)}] ({task}): " if task else "base: "
        try:
            recipe = load_recipe(base, spec.task_overrides(task))
            check_recipe(recipe)
            if spec.tasks and data:
                load_bundle(recipe)
        except PrunekitError as e:
            raise ConfigError(f"{where}{e}") from None
        recipes.append(recipe)
    return recipes


def _checked_grid(path: str | Path, out: str | Path | None, data: bool = True
                  ) -> tuple[AblationSpec, str, list[Recipe], list[Cell], Path]:
    """The ablation file, its base recipe, every task's recipe, the cells (every one's recipe checked) and the output
    folder (default: the base recipe's ``output.dir`` / the ablation's name); nothing is written. ``data=False``:
    the tasks' data is not loaded (``--status`` and ``--collect`` read run directories only)."""
    from ..run import check_recipe

    spec = load_ablation(path)
    base = str((Path(spec.source).parent / spec.base).resolve())
    task_recipes = _check_tasks(spec, base, data)
    rho = task_recipes[0].strategy.rho
    if any(not math.isclose(r.strategy.rho, rho) for r in task_recipes):
        raise ConfigError(f"tasks: strategy.rho must be the same for every task (the cells' budgets follow from it), "
                          f"got {[r.strategy.rho for r in task_recipes]}")
    cells = plan_cells(spec, rho)
    for c in cells:  # validate every cell's recipe before anything is written or trained
        check_recipe(load_recipe(base, c.overrides))
    out = Path(out) if out else Path(task_recipes[0].output.dir) / spec.name
    return spec, base, task_recipes, cells, out


def plan_ablation(path: str | Path, out: str | Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """``prunekit ablate --dry-run``: every cell with its training length, the epochs per task, and an estimate.

    The estimate multiplies each cell's steps (cycles x epochs x (training steps + evaluation steps), from its
    recipe and the size of its task's data) by the seconds per step of the base recipe's model, measured now on this
    machine with the threads a cell gets (cpu count / jobs), and divides by ``jobs``. Methods differ in cost (a
    linear probe is cheaper than full fine-tuning) and the machine's load changes: an estimate, not a promise.
    Nothing is written; every task's data is loaded once to count it.
    """
    return _plan(_checked_grid(path, out), jobs)


def _plan(grid: tuple[AblationSpec, str, list[Recipe], list[Cell], Path], jobs: int) -> dict[str, Any]:
    """:func:`plan_ablation` of a grid :func:`_checked_grid` has read."""
    import torch

    from ..run import load_bundle, step_seconds

    spec, base, task_recipes, cells, out = grid
    sizes = {}
    for task, recipe in zip(spec.task_labels, task_recipes):
        bundle = load_bundle(recipe)
        sizes[task] = (len(bundle.train), len(bundle.val))
    threads, before = max(1, (os.cpu_count() or 1) // max(1, jobs)), torch.get_num_threads()
    if jobs > 1:
        torch.set_num_threads(threads)
    try:
        train_s, eval_s = step_seconds(task_recipes[0])
    finally:
        torch.set_num_threads(before)
    rows, total, epochs_per_task = [], 0.0, {task: 0 for task in spec.task_labels}
    for c in cells:
        t = load_recipe(base, c.overrides).train
        n_train, n_val = sizes[c.task]
        cycles = max(p[2] for p in c.provides) + 1
        steps = math.ceil(n_train / t.batch_size)
        steps = min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch else steps
        seconds = cycles * t.epochs * (steps * train_s + math.ceil(n_val / t.eval_batch) * eval_s)
        done = _finished_as_planned(out / "runs" / c.run_id, base, c.overrides)
        rows.append({"run": c.run_id, "task": c.task, "row": c.row, "seed": c.seed, "cycles": cycles,
                     "epochs": t.epochs, "steps_per_epoch": steps, "seconds": seconds, "finished": done})
        epochs_per_task[c.task] += cycles * t.epochs
        total += 0.0 if done else seconds
    todo = sum(not r["finished"] for r in rows)
    return {"name": spec.name, "out": out, "cells": rows, "epochs_per_task": epochs_per_task,
            "train_step_s": train_s, "eval_step_s": eval_s, "batch_size": task_recipes[0].train.batch_size,
            "threads": threads if jobs > 1 else before, "jobs": jobs,
            "estimate_s": total / max(1, min(jobs, todo or 1))}


def run_ablation(path: str | Path, out: str | Path | None = None, jobs: int = 1, log=print) -> dict[str, Any]:
    """Run (or resume) the grid of an ablation file and write ``table.md``, ``table.csv``, ``cells.csv``, plots.

    Args:
        path: the ablation file.
        out: output folder (default: the base recipe's ``output.dir`` / the ablation's name).
        jobs: cells run in this many processes.
        log: where progress lines go.
    """
    from ..run.progress import ProgressReporter, make_console
    from ..run import ensure_checkpoint, run_recipe

    spec, base, task_recipes, cells, out = _checked_grid(path, out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # a missing backbone is pretrained once, here, not by every worker at the same time
    for recipe in task_recipes:
        ensure_checkpoint(recipe, runs, ProgressReporter(console=make_console(quiet=False)), run=run_recipe)
    todo = [c for c in cells if not _finished_as_planned(runs / c.run_id, base, c.overrides)]
    log(f"ablation {spec.name}: {len(cells)} runs, {len(cells) - len(todo)} already finished, {len(todo)} to run"
        f" ({jobs} process{'es' if jobs > 1 else ''}) -> {out}")
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    if jobs <= 1:
        for i, c in enumerate(todo, 1):
            _run_cell(base, c.overrides, str(runs / c.run_id), 0)
            log(f"[{i}/{len(todo)}] {c.run_id} done")
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, base, c.overrides, str(runs / c.run_id), threads): c for c in todo}
            for i, f in enumerate(as_completed(futures), 1):
                f.result()
                log(f"[{i}/{len(todo)}] {futures[f].run_id} done")
    return summarize(spec, cells, out, base, log)


def summarize(spec: AblationSpec, cells: list[Cell], out: Path, base: str, log=print) -> dict[str, Any]:
    """Collect every cell's result and the backbone's (``run/backbone_result.py``); write the tables and plots.
    A backbone that cannot be measured here (its pretraining data gone, say) leaves its row out, with a line in
    ``log``: the cells' tables do not wait on it."""
    from ..run.backbone_result import backbone_result

    raw, histories = [], {}
    for c in cells:
        records = [m for m in RunDir(out / "runs" / c.run_id).read_metrics() if m.get("type") == "cycle"]
        by_cycle = {r["cycle"]: r for r in records}
        epochs = load_recipe(base, c.overrides).train.epochs
        for row, sigma, cycle in c.provides:
            if cycle not in by_cycle:
                raise PrunekitError(f"{c.run_id}: cycle {cycle} missing from its metrics.jsonl")
            r = by_cycle[cycle]
            raw.append({"task": c.task, "row": row, "sigma_target": sigma, "seed": c.seed, "run": c.run_id,
                        "cycle": cycle, "epochs": (cycle + 1) * epochs, "top1": r["last_top1"],
                        "best_top1": r["best_top1"], "trainable": r["trainable_params"], "total": r["total_params"],
                        "sigma": r["sigma"], "widths": r["widths"]})
        if c.seed == spec.grid.seeds[0] and c.row in spec.plot.stage_strategies and \
                max(s for _, s, _ in c.provides) == max(spec.grid.sigma_targets):
            histories[(c.task, c.row)] = [(r["cycle"], r["widths"]) for r in sorted(records, key=lambda r: r["cycle"])]
    rows_order = ([VANILLA] if spec.grid.vanilla_adapters else []) + list(spec.grid.strategies)
    sigmas = sorted(spec.grid.sigma_targets)
    tasks = spec.task_labels
    agg = aggregate(raw, rows_order, sigmas, [b.label for b in spec.baselines], tasks)
    try:
        backbone = backbone_result(load_recipe(base, spec.task_overrides(tasks[0])))
    except PrunekitError as e:
        backbone = None
        log(f"the backbone's row is left out of the tables: {e}")
    write_tables(out, spec, raw, agg, rows_order, sigmas, tasks, backbone)
    _plots(spec, raw, agg, histories, rows_order, out / "plots", tasks)
    return {"out": out, "cells": raw, "table": [a for a in agg if not math.isnan(a["sigma_target"])],
            "baselines": [a for a in agg if math.isnan(a["sigma_target"])], "backbone": backbone}


def _plots(spec: AblationSpec, raw, agg, histories, rows_order, plots: Path, tasks: list[str]) -> None:
    from .plots import (
        plot_accuracy_vs_sigma, plot_params_vs_accuracy, plot_widths_by_stage, plot_widths_local_global,
    )

    multi = len(tasks) > 1
    for task in tasks:
        folder = plots / task if multi else plots
        title = f"{spec.name} / {task}" if multi else spec.name
        mine = [r for r in raw if r["task"] == task]
        plot_accuracy_vs_sigma([a for a in agg if a["task"] == task], rows_order, folder / "top1_vs_sigma.png", title)
        plot_params_vs_accuracy(mine, title, folder / "params_vs_top1.png")
        plot_widths_local_global(mine, spec, folder / "neurons_local_vs_global.png", title)
        plot_widths_by_stage({row: h for (t, row), h in histories.items() if t == task}, title,
                             folder / "neurons_per_stage.png", seed=spec.grid.seeds[0])
    if multi:
        plot_accuracy_vs_sigma([a for a in agg if a["task"] == MEAN], rows_order, plots / "top1_vs_sigma.png",
                               f"{spec.name}: mean over {len(tasks)} tasks")
