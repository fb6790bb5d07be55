"""Ablation plots: top-1 vs sigma (Figs. 3/5), parameters vs top-1, neurons per adapter local vs global and neurons
per stage per cycle (Fig. 4)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..run.summary import short_group_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path


def plot_accuracy_vs_sigma(agg: list[dict[str, Any]], rows: list[str], path: Path, title: str) -> Path:
    """One line per strategy: mean top-1 (error bar = std over seeds) against sigma, marker area ~ parameters."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    top = max((a["trainable_mean"] for a in agg if a["n"]), default=1)
    for row in rows:
        pts = sorted((a for a in agg if a["row"] == row and a["n"]), key=lambda a: a["sigma_target"])
        if not pts:
            continue
        xs = [a["sigma_target"] for a in pts]
        ys = [100 * a["top1_mean"] for a in pts]
        err = [100 * a["top1_std"] for a in pts]
        line = ax.errorbar(xs, ys, yerr=err, marker="", capsize=3, label=row,
                           linestyle="--" if row == "vanilla_adapters" else "-")
        ax.scatter(xs, ys, s=[20 + 300 * a["trainable_mean"] / top for a in pts], color=line[0].get_color(),
                   alpha=0.6, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("compression σ (log2)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{title}: top-1 vs σ (marker area ~ trainable parameters)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_params_vs_accuracy(raw: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Every cell and baseline: trainable parameters (log) against top-1, marker size = parameters."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    labels = sorted({r["row"] for r in raw}, key=lambda r: [r["row"] for r in raw].index(r))
    top = max(r["trainable"] for r in raw)
    for label in labels:
        pts = [r for r in raw if r["row"] == label]
        ax.scatter([r["trainable"] for r in pts], [100 * r["top1"] for r in pts], label=label, alpha=0.7,
                   s=[15 + 250 * math.sqrt(r["trainable"] / top) for r in pts])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{title}: accuracy against trainable parameters (every seed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_widths_local_global(raw: list[dict[str, Any]], spec, path: Path, title: str = "") -> Path | None:
    """Neurons per adapter at one sigma for the local and the global strategy (first seed), like Fig. 4."""
    sigma = spec.plot.widths_sigma or max(spec.grid.sigma_targets)
    seed = spec.grid.seeds[0]
    pick = {}
    for kind, name in (("local", spec.plot.local_strategy), ("global", spec.plot.global_strategy)):
        match = [r for r in raw if r["row"] == name and r["sigma_target"] == sigma and r["seed"] == seed]
        if match:
            pick[kind] = (name, match[0]["widths"])
    if not pick:
        return None
    plt = _plt()
    names = list(next(iter(pick.values()))[1])
    fig, axes = plt.subplots(len(pick), 1, figsize=(max(6.0, 0.35 * len(names) + 2), 2.2 * len(pick) + 0.8),
                             sharex=True, squeeze=False)
    for ax, (kind, (name, widths)) in zip(axes[:, 0], pick.items()):
        values = [widths.get(n, 0) for n in names]
        ax.bar(range(len(names)), values, color=["#c44e52" if v == 0 else "#4c72b0" for v in values])
        prefix = f"{title}: " if title else ""
        ax.set_title(f"{prefix}{kind} ({name}) at σ={sigma:g}, seed {seed}: {sum(values)} neurons, "
                     f"{sum(1 for v in values if v)}/{len(values)} adapters kept", fontsize=9, loc="left")
        ax.set_ylabel("neurons")
    axes[-1, 0].set_xticks(range(len(names)))
    axes[-1, 0].set_xticklabels([short_group_name(n) for n in names], rotation=75, fontsize=7)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


_STAGE = re.compile(r"(?:^|\.)(?:layers|stages)\.(\d+)\.")


def stage_of(group: str) -> str:
    """``layers.2.blocks.0.mlp.adapter.down`` -> ``stage 2`` (Swin, ConvNeXt ...); a model without stages -> ``all``."""
    m = _STAGE.search(group)
    return f"stage {m.group(1)}" if m else "all"


def plot_widths_by_stage(histories: dict[str, list[tuple[int, dict[str, int]]]], title: str, path: Path,
                         seed: int) -> Path | None:
    """For each strategy (one row): neurons of every adapter after each cycle (left, one line per cycle, stages
    shaded) and neurons per stage per cycle (right, stacked), like the paper's Fig. 4 over the schedule.

    Args:
        histories: strategy -> [(cycle, widths while that cycle trained)], its run to the largest sigma.
        title: figure title.
        path: PNG to write.
        seed: the seed the runs are of (for the title).
    """
    histories = {k: v for k, v in histories.items() if v and v[0][1]}
    if not histories:
        return None
    plt = _plt()
    names = list(next(iter(histories.values()))[0][1])
    stages = sorted({stage_of(n) for n in names}, key=lambda s: (len(s), s))
    fig, axes = plt.subplots(len(histories), 2, figsize=(12.0, 2.9 * len(histories) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1.0]})
    colors = plt.get_cmap("viridis")
    for (left, right), (strategy, history) in zip(axes, histories.items()):
        for i, name in enumerate(names):  # shade every other stage
            if stages.index(stage_of(name)) % 2:
                left.axvspan(i - 0.5, i + 0.5, color="#eeeeee", zorder=0)
        for k, (cycle, widths) in enumerate(history):
            values = [widths.get(n, 0) for n in names]
            left.plot(range(len(names)), values, marker="o", ms=3, lw=1,
                      color=colors(k / max(1, len(history) - 1)), label=f"cycle {cycle} ({sum(values)})")
        left.set_ylabel("neurons")
        left.set_title(f"{strategy}: neurons per adapter while each cycle trained (seed {seed})", fontsize=9,
                       loc="left")
        left.set_xticks(range(len(names)))
        left.set_xticklabels([short_group_name(n) for n in names], rotation=75, fontsize=6)
        left.legend(fontsize=6, ncol=2)
        bottom = [0] * len(history)
        for j, stage in enumerate(stages):
            per = [sum(w.get(n, 0) for n in names if stage_of(n) == stage) for _, w in history]
            right.bar([str(c) for c, _ in history], per, bottom=bottom, label=stage,
                      color=plt.get_cmap("tab10")(j))
            bottom = [b + p for b, p in zip(bottom, per)]
        right.set_xlabel("cycle")
        right.set_title("neurons per stage", fontsize=9, loc="left")
        right.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
