"""Per-cycle summary of a run: the table (report.md, terminal) and the neurons-per-adapter bar plot (Fig. 4).

Every cycle shows what the model costs (parameters, MACs, batch-1 latency) and what the cycle took (wall time); a
run that prunes adapters shows sigma, adapters and neurons, one that prunes the backbone the units left and the
share of MACs removed since cycle 0. Records written before a column existed show ``-`` in it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_write

__all__ = ["cycle_rows", "cycle_table", "columns_for", "markdown_table", "plot_widths", "short_group_name",
           "human_bytes", "human_count", "COLUMNS", "BACKBONE_COLUMNS"]

COLUMNS = ("cycle", "sigma", "adapters", "neurons", "trainable", "% of total", "params", "MACs", "latency (ms)",
           "best top-1", "last top-1", "trained file", "wall (s)")
BACKBONE_COLUMNS = ("cycle", "units", "params", "MACs", "MACs removed", "latency (ms)", "best top-1", "last top-1",
                    "trained file", "wall (s)")


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


def human_count(n: float | None) -> str:
    """``48.7 M``, ``4.11 G``: MACs at a glance (``-`` when not recorded)."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f} {unit}"
    return f"{n:.0f}"


def _number(c: dict[str, Any], key: str, fmt: str) -> str:
    value = c.get(key)
    return "-" if value is None else format(value, fmt)


def columns_for(cycles: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The table's header: :data:`BACKBONE_COLUMNS` for a run that prunes the backbone, else :data:`COLUMNS`."""
    return BACKBONE_COLUMNS if any(c.get("pruned") == "backbone" for c in cycles) else COLUMNS


def cycle_rows(cycles: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per cycle, in the order of :func:`columns_for`."""
    if columns_for(cycles) is BACKBONE_COLUMNS:
        return _backbone_rows(cycles)
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
            f"{c['total_params']:,}",
            human_count(c.get("macs")),
            _number(c, "latency_ms", ".2f"),
            f"{100 * c['best_top1']:.2f}",
            f"{100 * c['last_top1']:.2f}",
            human_bytes(c.get("adapter_bytes")),
            _number(c, "wall_s", ".1f"),
        ])
    return rows


def _backbone_rows(cycles: Sequence[dict[str, Any]]) -> list[list[str]]:
    macs0 = next((c["macs"] for c in cycles if c.get("cycle") == 0 and c.get("macs")), None)
    rows = []
    for c in cycles:
        macs = c.get("macs")
        rows.append([
            str(c["cycle"]),
            str(sum((c.get("widths") or {}).values())),
            f"{c['total_params']:,}",
            human_count(macs),
            "-" if macs is None or macs0 is None else f"{100 * (1 - macs / macs0):.1f} %",
            _number(c, "latency_ms", ".2f"),
            f"{100 * c['best_top1']:.2f}",
            f"{100 * c['last_top1']:.2f}",
            human_bytes(c.get("adapter_bytes")),
            _number(c, "wall_s", ".1f"),
        ])
    return rows


def cycle_table(cycles: Sequence[dict[str, Any]]) -> str:
    """The per-cycle markdown table (``report.md`` and what ``prunekit run`` prints at the end)."""
    return markdown_table(columns_for(cycles), cycle_rows(cycles))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_widths(cycles: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One bar chart per cycle: neurons n_i of every adapter (0 = removed), like the paper's Fig. 4; for a run that
    prunes the backbone, the share of every group's units (channels, neurons, heads) kept since cycle 0."""
    cycles = [c for c in cycles if c.get("widths")]
    if not cycles:
        return None
    if any(c.get("pruned") == "backbone" for c in cycles):
        return _plot_kept(cycles, path, title)
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
    return _save(fig, path)


def _plot_kept(cycles: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = cycles[0]["widths"]
    names = list(first)
    fig, axes = plt.subplots(len(cycles), 1, figsize=(max(6.0, 0.3 * len(names) + 2), 1.9 * len(cycles) + 0.8),
                             sharex=True, squeeze=False)
    for ax, c in zip(axes[:, 0], cycles):
        kept = [c["widths"].get(n, 0) / first[n] if first[n] else 0.0 for n in names]
        ax.bar(range(len(names)), kept, color="#4c72b0")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("kept")
        ax.set_title(f"cycle {c['cycle']}: {sum(c['widths'].values())} of {sum(first.values())} units, "
                     f"MACs {human_count(c.get('macs'))}", fontsize=9, loc="left")
    axes[-1, 0].set_xticks(range(len(names)))
    axes[-1, 0].set_xticklabels(names, rotation=75, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
