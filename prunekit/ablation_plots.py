"""Ablation plots: top-1 vs sigma (Figs. 3/5), parameters vs top-1, neurons per adapter local vs global (Fig. 4)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .report import short_group_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
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


def plot_params_vs_accuracy(raw: list[dict[str, Any]], spec, path: Path) -> Path:
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
    ax.set_title(f"{spec.name}: accuracy against trainable parameters (every seed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_widths_local_global(raw: list[dict[str, Any]], spec, path: Path) -> Path | None:
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
        ax.set_title(f"{kind} ({name}) at σ={sigma:g}, seed {seed}: {sum(values)} neurons, "
                     f"{sum(1 for v in values if v)}/{len(values)} adapters kept", fontsize=9, loc="left")
        ax.set_ylabel("neurons")
    axes[-1, 0].set_xticks(range(len(names)))
    axes[-1, 0].set_xticklabels([short_group_name(n) for n in names], rotation=75, fontsize=7)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
