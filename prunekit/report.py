"""Per-cycle summary of a run: the table (report.md, terminal) and the neurons-per-adapter bar plot (Fig. 4)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["cycle_rows", "markdown_table", "plot_widths", "short_group_name", "human_bytes"]

COLUMNS = ("cycle", "sigma", "adapters", "neurons", "trainable", "% of total", "best top-1", "last top-1",
           "trained file")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def short_group_name(name: str) -> str:
    """``layers.2.blocks.3.attn.adapter.down`` -> ``layers.2.blocks.3.attn``."""
    for suffix in (".adapter.down", ".down"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def cycle_rows(cycles: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in cycles:
        widths = c.get("widths") or {}
        sigma = c.get("sigma")
        rows.append([
            str(c["cycle"]),
            "-" if sigma is None else ("inf" if math.isinf(sigma) else f"{sigma:.1f}"),
            f"{sum(1 for w in widths.values() if w)}/{len(widths)}" if widths else "-",
            str(sum(widths.values())) if widths else "-",
            f"{c['trainable_params']:,}",
            f"{100 * c['trainable_params'] / c['total_params']:.3f}",
            f"{100 * c['best_top1']:.2f}",
            f"{100 * c['last_top1']:.2f}",
            human_bytes(c.get("adapter_bytes")),
        ])
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_widths(cycles: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One bar chart per cycle: neurons n_i of every adapter (0 = removed), like the paper's Fig. 4."""
    cycles = [c for c in cycles if c.get("widths")]
    if not cycles:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cycles[0]["widths"])
    fig, axes = plt.subplots(len(cycles), 1, figsize=(max(6.0, 0.35 * len(names) + 2), 1.9 * len(cycles) + 0.8),
                             sharex=True, squeeze=False)
    top = max(max(c["widths"].values()) for c in cycles) or 1
    for ax, c in zip(axes[:, 0], cycles):
        values = [c["widths"].get(n, 0) for n in names]
        colors = ["#c44e52" if v == 0 else "#4c72b0" for v in values]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_ylim(0, top * 1.1)
        sigma = c.get("sigma")
        ax.set_ylabel("neurons")
        ax.set_title(f"cycle {c['cycle']}: sigma={sigma:.0f}, {sum(values)} neurons, "
                     f"{sum(1 for v in values if v)}/{len(values)} adapters", fontsize=9, loc="left")
    axes[-1, 0].set_xticks(range(len(names)))
    axes[-1, 0].set_xticklabels([short_group_name(n) for n in names], rotation=75, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
