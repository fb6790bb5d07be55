"""``prunekit ablate``: a grid of strategies x sigma targets x seeds (+ baselines), as in the paper's Tables 3, 5, 6.

An ablation file names a base recipe and the grid::

    name: ablation_offline
    base: quickstart.yaml              # every cell is this recipe plus overrides
    set: [train.epochs=3]              # overrides for every cell
    grid:
      strategies: [vanilla_l1, local_l1, tina, ...]
      sigma_targets: [64, 128, 256, 512]
      seeds: [0, 1, 2]
      sigma0: 32                       # where iterative strategies start (method.sigma)
      vanilla_adapters: true           # the "Vanilla adapters" row: adapters injected at sigma, no pruning
    baselines:                         # parameter-matched rows (Tables 1-2): trained as long as the longest cell
      - {label: LoRA r=1, method: {name: lora, rank: 1}}

Every cell gets the same training budget as the iterative run to its sigma: one-shot cells start at
sigma * (1 - rho) and train as many cycles (``strategy.sigma_reference = sigma0``), vanilla adapters train that many
cycles too. An iterative strategy's run to the largest sigma passes through every smaller target after the same
cycles, with the same data order and the same prunes (runs are deterministic), so its per-cycle results fill the
smaller cells; ``tests/test_ablation.py`` checks that a shorter run equals the prefix of a longer one.

Cells run in their own run directories under ``OUT/runs``; a cell whose directory holds a finished run is not run
again (resume), and ``--jobs N`` runs cells in N processes. ``--dry-run`` (:func:`plan_ablation`) checks every cell,
lists it with its length and estimates the grid's time from a few steps measured on the spot.

Over 300 lines: the grid file, its cells, running them and the tables they fill are one command (plots are in
ablation_plots.py).
"""
from __future__ import annotations

import csv
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import option, parse_section
from .errors import RecipeError
from .recipe import SEED_MAX, Recipe, load_recipe, read_yaml, recipe_to_dict
from .registry import PrunekitError
from .report import markdown_table
from .rundir import RunDir, atomic_write_text
from .schedule import num_prunes
from .strategy import get_strategy

__all__ = ["AblationSpec", "Cell", "plan_cells", "plan_ablation", "run_ablation", "load_ablation", "is_ablation_file"]

VANILLA = "vanilla_adapters"


@dataclass
class GridSection:
    strategies: list[str] = field(**option("strategies to compare (rows)", default_factory=lambda: ["tina"]))
    sigma_targets: list[float] = field(**option("compression targets (columns)", default_factory=lambda: [64.0]))
    seeds: list[int] = field(**option("seeds; tables show mean +- std over them", default_factory=lambda: [0]))
    sigma0: float = field(**option("starting compression of iterative strategies (method.sigma)", default=32.0))
    vanilla_adapters: bool = field(**option("add the 'vanilla adapters' row: adapters at sigma, no pruning",
                                            default=True))


@dataclass
class BaselineSection:
    label: str = field(**option("row label", default="baseline"))
    method: dict = field(**option("the method section of the cell's recipe",
                                  default_factory=lambda: {"name": "linear"}))


@dataclass
class PlotSection:
    widths_sigma: Optional[float] = field(**option("sigma of the local-vs-global neurons-per-adapter plot (default: "
                                                   "the largest target)", default=None))
    local_strategy: str = field(**option("strategy shown as 'local' in that plot", default="local_l1"))
    global_strategy: str = field(**option("strategy shown as 'global' in that plot", default="tina"))


@dataclass
class AblationSpec:
    name: str = field(**option("ablation name (default: the file name)", default="ablation"))
    description: str = field(**option("free text", default=""))
    base: str = field(**option("recipe every cell starts from, relative to this file", default="quickstart.yaml"))
    set: list[str] = field(**option("key=value overrides for every cell", default_factory=list))
    grid: GridSection = field(**option("the strategies x sigma x seeds grid", default_factory=GridSection))
    baselines: list[dict] = field(**option("parameter-matched baselines: label + method", default_factory=list))
    plots: dict = field(**option("which strategies the neurons-per-adapter plot compares", default_factory=dict))
    source: Optional[str] = field(default=None, metadata={"help": "file read", "internal": True})

    def __post_init__(self):
        g = self.grid
        if not g.strategies or not g.sigma_targets or not g.seeds:
            raise RecipeError("grid: strategies, sigma_targets and seeds must each list at least one value")
        for s in g.strategies:
            try:
                get_strategy(s)
            except KeyError as e:
                raise RecipeError(f"grid.strategies: {e}") from None
        bad_seeds = [s for s in g.seeds if not 0 <= s <= SEED_MAX]
        if bad_seeds:
            raise RecipeError(f"grid.seeds: expected integers in 0 .. {SEED_MAX} (as train.seed), got {bad_seeds}")
        bad = [s for s in g.sigma_targets if not s > g.sigma0]
        if bad:
            raise RecipeError(f"grid.sigma_targets: every target must exceed grid.sigma0={g.sigma0:g}, got {bad}")
        self.baselines = [parse_section(BaselineSection, b, f"baselines[{i}]") for i, b in enumerate(self.baselines)]
        self.plot = parse_section(PlotSection, self.plots, "plots")


def is_ablation_file(path: str | Path) -> bool:
    """Whether ``path`` is a readable YAML mapping with a ``grid`` (an ablation file rather than a recipe)."""
    try:
        data = read_yaml(path, "ablation")
    except RecipeError:
        return False
    return isinstance(data, dict) and "grid" in data


def load_ablation(path: str | Path) -> AblationSpec:
    """Read and validate an ablation file (UTF-8 YAML, strict keys, like a recipe)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"ablation: no such file {str(path)!r}")
    data = read_yaml(path, "ablation")
    if data is None:
        raise RecipeError(f"ablation {str(path)!r} is empty (no YAML document); it names a base recipe and a grid "
                          "(see recipes/ablation_offline.yaml)")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping (base:, grid:, ...) at the top level, got "
                          f"{type(data).__name__} {data!r:.60}")
    data.setdefault("name", path.stem)
    spec = parse_section(AblationSpec, data)
    spec.source = str(path.resolve())
    return spec


@dataclass
class Cell:
    """One training run; it fills ``provides`` = [(row, sigma, cycle index)] with its per-cycle results."""

    run_id: str
    row: str
    seed: int
    overrides: list[str]
    provides: list[tuple[str, float, int]]


def _fmt(x: float) -> str:
    return f"{x:g}"


def plan_cells(spec: AblationSpec, rho: float) -> list[Cell]:
    """Every run the grid needs (see the module docstring for the budget rules)."""
    g = spec.grid
    sig = sorted(g.sigma_targets)
    cells = []
    for seed in g.seeds:
        common = list(spec.set) + [f"train.seed={seed}", f"strategy.sigma_reference={g.sigma0}"]
        for name in g.strategies:
            strat = get_strategy(name)
            if strat.mode == "iterative" and math.isclose(rho, 0.5):
                # one run to the largest target; cycle k sits at sigma0 * 2^k
                top = sig[-1]
                provides = [(name, s, num_prunes(g.sigma0, s, rho)) for s in sig]
                cells.append(Cell(f"{name}__s{_fmt(top)}__seed{seed}", name, seed,
                                  common + [f"method.sigma={g.sigma0}", f"strategy.name={name}",
                                            f"strategy.sigma_target={top}"], provides))
                continue
            for s in sig:
                cells.append(Cell(f"{name}__s{_fmt(s)}__seed{seed}", name, seed,
                                  common + [f"method.sigma={g.sigma0}", f"strategy.name={name}",
                                            f"strategy.sigma_target={s}"],
                                  [(name, s, num_prunes(g.sigma0, s, rho))]))
        if g.vanilla_adapters:
            for s in sig:
                cycles = num_prunes(g.sigma0, s, rho) + 1
                cells.append(Cell(f"{VANILLA}__s{_fmt(s)}__seed{seed}", VANILLA, seed,
                                  common + ["strategy.name=none", f"strategy.cycles={cycles}",
                                            "method={name: adapters}", f"method.sigma={s}"],
                                  [(VANILLA, s, cycles - 1)]))
        longest = num_prunes(g.sigma0, sig[-1], rho) + 1
        for b in spec.baselines:
            row = b.label
            method = yaml.safe_dump(b.method, default_flow_style=True).strip()
            cells.append(Cell(f"baseline_{_slug(row)}__seed{seed}", row, seed,
                              common + ["strategy.name=none", f"strategy.cycles={longest}", f"method={method}"],
                              [(row, math.nan, longest - 1)]))
    return cells


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _cell_results(run_dir: Path) -> list[dict[str, Any]]:
    return [m for m in RunDir(run_dir).read_metrics() if m.get("type") == "cycle"]


def _finished_as_planned(run_dir: Path, base: str, overrides: list[str]) -> bool:
    """A finished run whose recipe is the one the grid asks for now (a changed grid re-runs the cell).

    Both sides go through the current schema, so a key added to prunekit since (with its default) does not make a
    finished cell stale.
    """
    if not (run_dir / RunDir.DONE).exists():
        return False
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

    from .progress import ProgressReporter, make_console
    from .run import run_recipe

    if threads:
        torch.set_num_threads(threads)
    recipe = load_recipe(base, overrides)
    run_recipe(recipe, out=out, overwrite=True, reporter=ProgressReporter(console=make_console(quiet=True)))
    return out


def _checked_grid(path: str | Path) -> tuple[AblationSpec, str, Recipe, list[Cell], list[Recipe]]:
    """The ablation file, its base recipe, its cells and their recipes, every one checked (nothing written)."""
    from .run import check_recipe

    spec = load_ablation(path)
    base = str((Path(spec.source).parent / spec.base).resolve())
    try:
        base_recipe = load_recipe(base, list(spec.set))
    except RecipeError as e:
        raise RecipeError(f"base: {e}") from None
    check_recipe(base_recipe)
    cells = plan_cells(spec, base_recipe.strategy.rho)
    recipes = [load_recipe(base, c.overrides) for c in cells]
    for r in recipes:  # validate every cell's recipe before anything is written or trained
        check_recipe(r)
    return spec, base, base_recipe, cells, recipes


def plan_ablation(path: str | Path, out: str | Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """``prunekit ablate --dry-run``: every cell with its training length, and an estimate of the grid's time.

    The estimate multiplies each cell's steps (cycles x epochs x (training steps + evaluation steps), from its
    recipe and the size of the base recipe's data) by the seconds per step of the base recipe's model, measured now
    on this machine with the threads a cell gets (cpu count / jobs), and divides by ``jobs``. Methods differ in cost
    (a linear probe is cheaper than full fine-tuning) and the machine's load changes: an estimate, not a promise.
    Nothing is written; the data is loaded once to count it.
    """
    import torch

    from .run import load_bundle, step_seconds

    spec, base, base_recipe, cells, recipes = _checked_grid(path)
    out = Path(out) if out else Path(base_recipe.output.dir) / spec.name
    bundle = load_bundle(base_recipe)
    n_train, n_val = len(bundle.train), len(bundle.val)
    threads, before = max(1, (os.cpu_count() or 1) // max(1, jobs)), torch.get_num_threads()
    if jobs > 1:
        torch.set_num_threads(threads)
    try:
        train_s, eval_s = step_seconds(base_recipe)
    finally:
        torch.set_num_threads(before)
    rows, total = [], 0.0
    for c, r in zip(cells, recipes):
        t = r.train
        cycles = max(p[2] for p in c.provides) + 1
        steps = math.ceil(n_train / t.batch_size)
        steps = min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch else steps
        seconds = cycles * t.epochs * (steps * train_s + math.ceil(n_val / t.eval_batch) * eval_s)
        done = _finished_as_planned(out / "runs" / c.run_id, base, c.overrides)
        rows.append({"run": c.run_id, "row": c.row, "seed": c.seed, "cycles": cycles, "epochs": t.epochs,
                     "steps_per_epoch": steps, "seconds": seconds, "finished": done})
        total += 0.0 if done else seconds
    return {"name": spec.name, "out": out, "cells": rows, "train_step_s": train_s, "eval_step_s": eval_s,
            "batch_size": base_recipe.train.batch_size, "threads": threads if jobs > 1 else before,
            "jobs": jobs, "estimate_s": total / max(1, min(jobs, sum(not r["finished"] for r in rows) or 1))}


def run_ablation(path: str | Path, out: str | Path | None = None, jobs: int = 1, log=print) -> dict[str, Any]:
    """Run (or resume) the grid of an ablation file and write ``table.md``, ``table.csv``, ``cells.csv``, plots."""
    from .progress import ProgressReporter, make_console
    from .run import ensure_checkpoint, run_recipe

    spec, base, base_recipe, cells, _ = _checked_grid(path)
    rho = base_recipe.strategy.rho
    out = Path(out) if out else Path(base_recipe.output.dir) / spec.name
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # a missing backbone is pretrained once, here, not by every worker at the same time
    ensure_checkpoint(base_recipe, runs, ProgressReporter(console=make_console(quiet=False)), run=run_recipe)
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
    return summarize(spec, cells, out, rho)


def summarize(spec: AblationSpec, cells: list[Cell], out: Path, rho: float) -> dict[str, Any]:
    """Collect every cell's result and write the tables and plots."""
    raw = []
    for c in cells:
        results = _cell_results(out / "runs" / c.run_id)
        by_cycle = {r["cycle"]: r for r in results}
        for row, sigma, cycle in c.provides:
            if cycle not in by_cycle:
                raise PrunekitError(f"{c.run_id}: cycle {cycle} missing from its metrics.jsonl")
            r = by_cycle[cycle]
            raw.append({"row": row, "sigma_target": sigma, "seed": c.seed, "run": c.run_id, "cycle": cycle,
                        "top1": r["last_top1"], "best_top1": r["best_top1"], "trainable": r["trainable_params"],
                        "total": r["total_params"], "sigma": r["sigma"], "widths": r["widths"]})
    rows_order = ([VANILLA] if spec.grid.vanilla_adapters else []) + list(spec.grid.strategies)
    sigmas = sorted(spec.grid.sigma_targets)
    agg = []
    for row in rows_order:
        for s in sigmas:
            vals = [r for r in raw if r["row"] == row and r["sigma_target"] == s]
            agg.append(_aggregate(row, s, vals))
    base_rows = [_aggregate(b.label, math.nan, [r for r in raw if r["row"] == b.label]) for b in spec.baselines]
    _write_csv(out / "cells.csv", raw, ["row", "sigma_target", "seed", "run", "cycle", "top1", "best_top1",
                                        "trainable", "total", "sigma"])
    _write_csv(out / "table.csv", agg + base_rows, ["row", "sigma_target", "n", "top1_mean", "top1_std",
                                                    "trainable_mean", "sigma_mean"])
    atomic_write_text(out / "table.md", _table_md(spec, rows_order, sigmas, agg, base_rows, raw))
    from .ablation_plots import plot_accuracy_vs_sigma, plot_params_vs_accuracy, plot_widths_local_global

    plots = out / "plots"
    plot_accuracy_vs_sigma(agg, rows_order, plots / "top1_vs_sigma.png", spec.name)
    plot_params_vs_accuracy(raw, spec, plots / "params_vs_top1.png")
    plot_widths_local_global(raw, spec, plots / "neurons_local_vs_global.png")
    return {"out": out, "cells": raw, "table": agg, "baselines": base_rows}


def _aggregate(row: str, sigma: float, vals: list[dict]) -> dict[str, Any]:
    tops = [v["top1"] for v in vals]
    return {"row": row, "sigma_target": sigma, "n": len(vals),
            "top1_mean": statistics.fmean(tops) if tops else math.nan,
            "top1_std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
            "trainable_mean": statistics.fmean(v["trainable"] for v in vals) if vals else math.nan,
            "sigma_mean": statistics.fmean(v["sigma"] for v in vals if v["sigma"] is not None)
            if any(v["sigma"] is not None for v in vals) else math.nan}


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _pm(a: dict) -> str:
    if not a["n"]:
        return "-"
    return f"{100 * a['top1_mean']:.2f} ± {100 * a['top1_std']:.2f}"


def _table_md(spec, rows_order, sigmas, agg, base_rows, raw) -> str:
    lookup = {(a["row"], a["sigma_target"]): a for a in agg}
    header = ["row", "scorer / scope / mode"] + [f"σ={_fmt(s)}" for s in sigmas]
    lines = [f"# {spec.name}", "", spec.description, "",
             f"Top-1 (%) at the end of the last cycle, mean ± std over seeds {spec.grid.seeds}.", ""]
    body = []
    for row in rows_order:
        desc = "adapters at σ, no pruning" if row == VANILLA else _strategy_desc(row)
        body.append([row, desc] + [_pm(lookup[(row, s)]) for s in sigmas])
    lines.append(markdown_table(header, body))
    lines += ["Trainable parameters (adapters + head), mean over seeds:", ""]
    body = [[row, ""] + [f"{lookup[(row, s)]['trainable_mean']:,.0f}" for s in sigmas] for row in rows_order]
    lines.append(markdown_table(header, body))
    matched = [(f"{spec.plot.global_strategy} (σ={_fmt(s)})", lookup.get((spec.plot.global_strategy, s)))
               for s in sigmas] + [(f"vanilla adapters (σ={_fmt(s)})", lookup.get((VANILLA, s))) for s in sigmas]
    matched = [(label, a) for label, a in matched if a is not None and a["n"]] + [(b["row"], b) for b in base_rows]
    if matched:
        lines += ["Accuracy against trainable parameters (the spirit of Tables 1-2; baselines train as long as the "
                  "longest cell):", ""]
        body = [[label, f"{a['trainable_mean']:,.0f}", _pm(a)]
                for label, a in sorted(matched, key=lambda t: t[1]["trainable_mean"])]
        lines.append(markdown_table(["method", "trainable", "top-1 (%)"], body))
    return "\n".join(lines) + "\n"


def _strategy_desc(name: str) -> str:
    s = get_strategy(name)
    return f"{s.scorer} / {s.scope} / {s.mode}"
