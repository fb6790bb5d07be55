"""Record, the summary: ``report.md`` of a run directory (the table of every cycle, what it cost, how to check it)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..recipe import Recipe
from ..report import COLUMNS, cycle_rows, human_bytes, markdown_table
from ..rundir import RunDir

__all__ = ["write_report", "backbone_bytes", "run_title"]


def backbone_bytes(model: nn.Module) -> int:
    """Bytes of the frozen and trained weights as stored in float32 (what one full model copy per task costs)."""
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


def run_title(recipe: Recipe, path) -> str:
    """What a run is called in its report and plot: its directory's name, with the recipe's when they differ."""
    return recipe.name if path.name == recipe.name else f"{path.name} ({recipe.name} recipe)"


def write_report(rundir: RunDir, recipe: Recipe, cycles: list[dict[str, Any]], model_bytes: int) -> None:
    """``report.md``: the recipe in brief, the per-cycle table, the size of the last trained file vs a model copy."""
    m, s, t, d = recipe.model, recipe.strategy, recipe.train, recipe.data
    weights = "hub weights" if m.pretrained else m.checkpoint or "random weights"
    strategy = (f"`none` (no pruning), {s.cycles} cycle{'s' if s.cycles != 1 else ''}" if s.name == "none" else
                f"`{s.name}` rho={s.rho} sigma_target={s.sigma_target:g}")
    lines = [f"# {run_title(recipe, rundir.path)}", "", recipe.description or "", "",
             f"- model: `{m.name}` ({weights}), img {m.img_size}px",
             f"- method: `{recipe.method}`",
             f"- strategy: {strategy}",
             f"- data: `{d.name}`{f' from `{d.root}`' if d.root else ''}; train: {t.epochs} "
             f"epoch{'s' if t.epochs != 1 else ''} per cycle ({t.warmup_epochs} warm-up), lr {t.lr:g}, batch "
             f"{t.batch_size}, seed {t.seed}",
             f"- whole model (one full copy per task): {human_bytes(model_bytes)}", "",
             markdown_table(COLUMNS, cycle_rows(cycles))]
    if cycles and cycles[-1].get("adapter_bytes"):
        ratio = model_bytes / cycles[-1]["adapter_bytes"]
        lines.append(f"The last cycle's trained-parameters file is {human_bytes(cycles[-1]['adapter_bytes'])}, "
                     f"{ratio:.0f}x smaller than a full model copy.\n")
    if recipe.output.plot and any(c.get("widths") for c in cycles):
        lines.append("![neurons per adapter](plots/neurons_per_adapter.png)\n")
    lines.append("Reproduce: `prunekit run <recipe> --out <dir>` with `recipe.resolved.yaml`; check a cycle with "
                 f"`prunekit eval {rundir.path} --cycle K`.\n")
    rundir.write_text("report.md", "\n".join(lines))
