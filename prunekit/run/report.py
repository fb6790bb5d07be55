"""Record, the summary: ``report.md`` of a run directory (the table of every cycle, what it cost, how to check it)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..budget.cost import REPEATS, WARMUP
from ..recipe.spec import Recipe
from .summary import cycle_table, human_bytes, human_count
from ..io.rundir import RunDir

__all__ = ["write_report", "backbone_bytes", "plot_file", "run_title"]


def backbone_bytes(model: nn.Module) -> int:
    """Bytes of the frozen and trained weights as stored in float32 (what one full model copy per task costs)."""
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


def plot_file(recipe: Recipe) -> str:
    """The run directory's plot: neurons per adapter, or the share of units kept per backbone group."""
    return "plots/units_per_group.png" if recipe.strategy.groups == "backbone" else "plots/neurons_per_adapter.png"


def run_title(recipe: Recipe, path) -> str:
    """What a run is called in its report and plot: its directory's name, with the recipe's when they differ."""
    return recipe.name if path.name == recipe.name else f"{path.name} ({recipe.name} recipe)"


def _strategy_line(recipe: Recipe) -> str:
    s = recipe.strategy
    if s.name == "none":
        return f"- strategy: `none` (no pruning), {s.cycles} cycle{'s' if s.cycles != 1 else ''}"
    parts = [f"`{s.name}`"] + [f"{k} `{v}`" for k in ("scorer", "scope", "mode") if (v := getattr(s, k))]
    if s.budget.kind is None:
        return f"- strategy: {' '.join(parts)} rho={s.rho} sigma_target={s.sigma_target:g}"
    line = f"- strategy: {' '.join(parts)} rho={s.rho}, budget: remove {s.budget.value:g} of the {s.budget.kind}"
    if s.groups == "backbone":
        b = s.backbone
        line += (f" from the backbone (heads: {str(b.heads).lower()}, ignore: {b.ignore or 'none'}, min_width "
                 f"{b.min_width}, round_to {b.round_to or 1})")
    return line


def _backbone_summary(cycles: list[dict[str, Any]]) -> str:
    first, last = cycles[0], cycles[-1]
    if not (first.get("macs") and last.get("macs")):
        return ""
    params = 100 * last["total_params"] / first["total_params"]
    removed = 100 * (1 - last["macs"] / first["macs"])
    return (f"Cycle {last['cycle']} against cycle 0: {last['total_params']:,} of {first['total_params']:,} parameters "
            f"({params:.1f} %), {human_count(last['macs'])} of {human_count(first['macs'])} MACs ({removed:.1f} % "
            f"removed), batch-1 latency {last['latency_ms']:.2f} ms against {first['latency_ms']:.2f} ms, top-1 "
            f"{100 * last['last_top1']:.2f} % against {100 * first['last_top1']:.2f} %.\n")


def write_report(rundir: RunDir, recipe: Recipe, cycles: list[dict[str, Any]], model_bytes: int) -> None:
    """``report.md``: the recipe in brief, the per-cycle table, the size of the last trained file vs a model copy
    (adapters) or what the pruned model costs against cycle 0's (backbone)."""
    m, t, d = recipe.model, recipe.train, recipe.data
    weights = "hub weights" if m.pretrained else m.checkpoint or "random weights"
    backbone = recipe.strategy.groups == "backbone" and recipe.strategy.name != "none"
    lines = [f"# {run_title(recipe, rundir.path)}", "", recipe.description or "", "",
             f"- model: `{m.name}` ({weights}), img {m.img_size}px",
             f"- method: `{recipe.method}`",
             _strategy_line(recipe),
             f"- data: `{d.name}`{f' from `{d.root}`' if d.root else ''}; train: {t.epochs} "
             f"epoch{'s' if t.epochs != 1 else ''} per cycle ({t.warmup_epochs} warm-up), lr {t.lr:g}, batch "
             f"{t.batch_size}, seed {t.seed}",
             f"- whole model (one full copy per task): {human_bytes(model_bytes)}", "",
             cycle_table(cycles)]
    if backbone and cycles:
        lines.append(_backbone_summary(cycles))
    elif cycles and cycles[-1].get("adapter_bytes"):
        ratio = model_bytes / cycles[-1]["adapter_bytes"]
        lines.append(f"The last cycle's trained-parameters file is {human_bytes(cycles[-1]['adapter_bytes'])}, "
                     f"{ratio:.0f}x smaller than a full model copy.\n")
    if recipe.output.plot and any(c.get("widths") for c in cycles):
        caption = "units kept per group" if backbone else "neurons per adapter"
        lines.append(f"![{caption}]({plot_file(recipe)})\n")
    lines.append(f"MACs: one forward of one image, counted by torch-pruning; latency: median of {REPEATS} batch-1 "
                 f"forwards after {WARMUP} warm-up ones, on the training device; wall: seconds since the previous "
                 "cycle ended (its prune, training and evaluation).\n")
    lines.append("Reproduce: `prunekit run <recipe> --out <dir>` with `recipe.resolved.yaml`; check a cycle with "
                 f"`prunekit eval {rundir.path} --cycle K`.\n")
    rundir.write_text("report.md", "\n".join(lines))
