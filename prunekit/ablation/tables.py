"""The tables of ``prunekit ablate``: ``cells.csv`` (one line per cell result), ``table.csv`` and ``table.md``.

A grid on one task has one aggregate row per (row, sigma) and per baseline: mean ± std over seeds. On several tasks
every task has those rows (``task`` column), followed by the rows of task ``mean``: the mean over tasks and seeds,
± the std over seeds of the task-averaged top-1 (seed s's mean over the tasks, then the spread of that over seeds; the
tasks' own spread in difficulty would swamp any difference between methods). ``epochs`` is what a row's cells trained
(every cycle); cells of one column train alike, and a comparison between cells that did not is marked in table.md.
The pretrained backbone, when its result is known, is table.csv's last line (task ``pretraining``, row ``backbone``:
top-1 on its own pretraining validation split, its parameters, its epochs) and the first section of table.md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..run.summary import markdown_table
from ..io.files import atomic_write_text
from ..engine.strategy import get_strategy

__all__ = ["VANILLA", "MEAN", "PRETRAINING", "BACKBONE", "aggregate", "backbone_row", "write_tables"]

VANILLA = "vanilla_adapters"
MEAN = "mean"  # the task label of the rows averaged over tasks
PRETRAINING, BACKBONE = "pretraining", "backbone"  # task and row of the pretrained backbone's line
CELL_COLUMNS = ["row", "sigma_target", "seed", "run", "cycle", "epochs", "top1", "best_top1", "trainable", "total",
                "sigma", "widths"]  # widths: every adapter's neurons after the cell's cycle (JSON; {} when unpruned)
TABLE_COLUMNS = ["row", "sigma_target", "n", "top1_mean", "top1_std", "trainable_mean", "sigma_mean", "epochs"]


def _epochs(vals: list[dict]) -> int | str:
    found = sorted({v["epochs"] for v in vals})
    return found[0] if len(found) == 1 else (f"{found[0]}-{found[-1]}" if found else "")


def _row(task: str, row: str, sigma: float, vals: list[dict], tops: list[float], std: float) -> dict[str, Any]:
    sigmas = [v["sigma"] for v in vals if v["sigma"] is not None]
    return {"task": task, "row": row, "sigma_target": sigma, "n": len(vals),
            "top1_mean": statistics.fmean(tops) if tops else math.nan, "top1_std": std,
            "trainable_mean": statistics.fmean(v["trainable"] for v in vals) if vals else math.nan,
            "sigma_mean": statistics.fmean(sigmas) if sigmas else math.nan, "epochs": _epochs(vals)}


def _over_seeds(task: str, row: str, sigma: float, vals: list[dict]) -> dict[str, Any]:
    tops = [v["top1"] for v in vals]
    return _row(task, row, sigma, vals, tops, statistics.stdev(tops) if len(tops) > 1 else 0.0)


def _over_tasks(row: str, sigma: float, vals: list[dict], tasks: list[str]) -> dict[str, Any]:
    per_seed = {}
    for seed in sorted({v["seed"] for v in vals}):
        tops = {v["task"]: v["top1"] for v in vals if v["seed"] == seed}
        if set(tops) == set(tasks):  # a seed counts once every task has its result
            per_seed[seed] = statistics.fmean(tops.values())
    std = statistics.stdev(per_seed.values()) if len(per_seed) > 1 else 0.0
    return _row(MEAN, row, sigma, vals, [v["top1"] for v in vals], std)


def aggregate(raw: list[dict[str, Any]], rows: list[str], sigmas: list[float], baselines: list[str],
              tasks: list[str]) -> list[dict[str, Any]]:
    """Every task's (row, sigma) and baseline rows, then (several tasks) the same rows of task :data:`MEAN`."""
    def pick(task, row, sigma=None):
        return [r for r in raw if (task is None or r["task"] == task) and r["row"] == row
                and (sigma is None or r["sigma_target"] == sigma)]

    ran = {(r["row"], r["sigma_target"]) for r in raw}  # a grid may run a row at some of its columns only
    cells = [(row, s) for row in rows for s in sigmas if (row, s) in ran]
    out = []
    for task in tasks:
        out += [_over_seeds(task, row, s, pick(task, row, s)) for row, s in cells]
        out += [_over_seeds(task, b, math.nan, pick(task, b)) for b in baselines]
    if len(tasks) > 1:
        out += [_over_tasks(row, s, pick(None, row, s), tasks) for row, s in cells]
        out += [_over_tasks(b, math.nan, pick(None, b), tasks) for b in baselines]
    return out


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, dict) else v)
                    for k, v in r.items()})
    return buf.getvalue()


def backbone_row(backbone: dict[str, Any]) -> dict[str, Any]:
    """table.csv's line for the pretrained backbone (``run/backbone_result.py``): task :data:`PRETRAINING`, row
    :data:`BACKBONE`, its top-1 on its own validation split, all its parameters as ``trainable_mean``."""
    return {"task": PRETRAINING, "row": BACKBONE, "sigma_target": math.nan, "n": 1, "top1_mean": backbone["top1"],
            "top1_std": math.nan, "trainable_mean": backbone["params"], "sigma_mean": math.nan,
            "epochs": backbone["epochs"]}


def write_tables(out: Path, spec, raw: list[dict], agg: list[dict], rows: list[str], sigmas: list[float],
                 tasks: list[str], backbone: dict[str, Any] | None = None) -> None:
    """``cells.csv``, ``table.csv`` and ``table.md`` in ``out`` (a ``task`` column first when there are tasks);
    ``backbone`` (its pretraining result, when known) is table.csv's last line and a section of table.md."""
    multi = bool(spec.tasks)
    lead = ["task"] if multi else []
    atomic_write_text(out / "cells.csv", _csv(raw, lead + CELL_COLUMNS))
    extra = [backbone_row(backbone)] if backbone else []
    atomic_write_text(out / "table.csv", _csv(agg + extra, lead + TABLE_COLUMNS))
    atomic_write_text(out / "table.md", _markdown(spec, raw, agg, rows, sigmas, tasks, backbone))


def _pm(a: dict | None) -> str:
    if not a or not a["n"]:
        return "-"
    return f"{100 * a['top1_mean']:.2f} ± {100 * a['top1_std']:.2f}"


def _backbone_lines(b: dict[str, Any] | None) -> list[str]:
    if not b:
        return []
    how = (f"re-measured by prunekit ablate on its {b['val_images']:,} validation images" if b["source"] == "measured"
           else "recorded by its pretraining run in the checkpoint's metadata")
    return ["## Backbone", "",
            f"`{b['checkpoint']}`, made by `{b['recipe']}` ({b['epochs']} epochs on `{b['data']}`, "
            f"{b['params']:,} parameters): top-1 {100 * b['top1']:.2f} % on its pretraining task's validation split "
            f"({how}). table.csv: task `{PRETRAINING}`, row `{BACKBONE}`.", ""]


def _markdown(spec, raw, agg, rows, sigmas, tasks, backbone=None) -> str:
    lines = [f"# {spec.name}", "", spec.description, ""] + _backbone_lines(backbone)
    if not spec.tasks:
        lines += [f"Top-1 (%) at the end of the last cycle, mean ± std over seeds {spec.grid.seeds}.", ""]
        return "\n".join(lines + _sections(spec, [a for a in agg if a["task"] == ""], rows, sigmas)) + "\n"
    lines += ["Tasks (the same backbone, adapted to each):", ""]
    lines += [f"- `{t.label}`: {t.description or ', '.join(t.set)}" for t in spec.tasks] + [""]
    lines += [f"## Mean over the {len(tasks)} tasks", "",
              f"Top-1 (%) at the end of the last cycle, mean over tasks and seeds {spec.grid.seeds}; ± is the std "
              "over seeds of the mean over tasks.", ""]
    lines += _sections(spec, [a for a in agg if a["task"] == MEAN], rows, sigmas)
    for task in tasks:
        lines += [f"## Task `{task}`", "", f"Top-1 (%), mean ± std over seeds {spec.grid.seeds}.", ""]
        lines += _sections(spec, [a for a in agg if a["task"] == task], rows, sigmas)
    return "\n".join(lines) + "\n"


def _sections(spec, agg: list[dict], rows: list[str], sigmas: list[float]) -> list[str]:
    """The strategy x sigma table, its trainable parameters and the accuracy-vs-parameters table of one task."""
    lookup = {(a["row"], a["sigma_target"]): a for a in agg if not math.isnan(a["sigma_target"])}
    base_rows = [a for a in agg if math.isnan(a["sigma_target"])]
    header = ["row", "scorer / scope / mode"] + [f"σ={s:g}" for s in sigmas]
    body = [[row, "adapters at σ, no pruning" if row == VANILLA else _strategy_desc(row)]
            + [_pm(lookup.get((row, s))) for s in sigmas] for row in rows]
    lines = [markdown_table(header, body), "Trainable parameters (adapters + head), mean over seeds:", ""]
    body = [[row, ""] + [f"{lookup[(row, s)]['trainable_mean']:,.0f}" if (row, s) in lookup else "-" for s in sigmas]
            for row in rows]
    lines.append(markdown_table(header, body))
    matched = [(f"{spec.plot.global_strategy} (σ={s:g})", lookup.get((spec.plot.global_strategy, s))) for s in sigmas]
    matched += [(f"vanilla adapters (σ={s:g})", lookup.get((VANILLA, s))) for s in sigmas]
    matched = [(label, a) for label, a in matched if a is not None and a["n"]] + [(b["row"], b) for b in base_rows]
    if matched:
        budgets = {str(a["epochs"]) for _, a in matched}
        note = "" if len(budgets) == 1 else (" Training epochs differ between these rows (" + ", ".join(
            sorted(budgets)) + "): compare only rows of equal epochs.")
        lines += ["Accuracy against trainable parameters (the spirit of Tables 1-2; baselines train as long as the "
                  f"longest cell).{note}", ""]
        body = [[label, f"{a['trainable_mean']:,.0f}", _pm(a), str(a["epochs"])]
                for label, a in sorted(matched, key=lambda t: t[1]["trainable_mean"])]
        lines.append(markdown_table(["method", "trainable", "top-1 (%)", "epochs"], body))
    return lines


def _strategy_desc(name: str) -> str:
    s = get_strategy(name)
    return f"{s.scorer} / {s.scope} / {s.mode}"
