"""Record: the run directory of one run, from the check that it may be written to the ``DONE`` file.

A :class:`RunRecord` is opened before anything heavy (its target checked, or a resumed run's state checked, see
resuming.py), created only once every check has passed, written per epoch and per cycle while the run trains, and
finished with the report, the plot, the optional whole-model checkpoint and ``DONE``. Under torchrun rank 0 alone
writes; every rank holds a record, so every rank raises the same errors (:func:`on_main_rank`).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import yaml
from torch import nn

from ..core import distributed as dist_utils
from ..errors import PrunekitError
from .progress import ProgressReporter
from ..recipe.spec import Recipe, recipe_to_dict
from .summary import cycle_table, plot_widths
from ..train.resume import STATE_FILE, TEACHER_FILE
from ..io.rundir import RunDir
from ..io.runpaths import run_directory
from ..io.runlock import describe_holder
from ..io.statedict import with_versions
from .checkpoint import save_checkpoint
from .metrics import TensorBoardScalars, cycles_csv
from .report import plot_file, run_title, write_report

__all__ = ["RunRecord", "RunResult", "RunFinished", "on_main_rank", "trained_state", "cycle_tensors", "CLASSES_FILE"]

CLASSES_FILE = "classes.json"

T = TypeVar("T")


@dataclass
class RunResult:
    """What a run leaves: its directory and one summary per training cycle (as in ``metrics.jsonl``)."""

    run_dir: Path | None
    cycles: list[dict[str, Any]] = field(default_factory=list)
    backbone_bytes: int = 0

    def table(self) -> str:
        """The per-cycle summary as a markdown table (what ``prunekit run`` prints at the end)."""
        return cycle_table(self.cycles)


class RunFinished(PrunekitError):
    """``--resume`` of a run that already finished: nothing to do."""

    def __init__(self, path: Path):
        super().__init__(f"{path} already finished (DONE is written); nothing to resume. `prunekit eval {path}` "
                         "checks it; --overwrite with the recipe runs it again")
        self.path = path


def on_main_rank(fn: Callable[[], T], run_path: Path) -> T | None:
    """``fn()`` on rank 0 alone; an error it raises is raised on every rank, so no rank waits for the others."""
    result, error = None, None
    if dist_utils.is_main():
        try:
            result = fn()
        except PrunekitError as e:
            error = e
    failed = dist_utils.broadcast_object(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    if failed is not None:
        raise RunFinished(run_path) if failed[0] == "RunFinished" else PrunekitError(failed[1])
    return result


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapters, head ...): what a cycle's ``.safetensors`` file holds."""
    return with_versions({n: p for n, p in model.named_parameters() if p.requires_grad}, model)


def cycle_tensors(model: nn.Module, pruned: str | None) -> dict[str, torch.Tensor]:
    """What a cycle's file holds: the trained parameters, or for a run that prunes the backbone the whole pruned
    model (every parameter and buffer; with ``plan.json`` it rebuilds the model on its own)."""
    return with_versions(model.state_dict()) if pruned == "backbone" else trained_state(model)


class RunRecord:
    """The run directory of ``recipe`` (``out``, or ``output.dir / output.run_name``), writable on rank 0.

    Args:
        recipe: the checked recipe (``recipe.resolved`` filled); ``recipe.resolved.yaml`` is written from it.
        out: the run directory, or None for the recipe's own.
        cleanup: closes the directory when the run ends (removes temporary files of a failed write, releases the
            lock).

    Attributes:
        classes: the task's class names (set once the data is loaded): ``classes.json`` and every cycle's trained
            file carry them, so ``prunekit predict`` names its answers.
    """

    def __init__(self, recipe: Recipe, out: str | Path | None, cleanup: contextlib.ExitStack):
        self.recipe = recipe
        self.path = Path(out) if out else run_directory(recipe.output.dir, recipe.output.run_name, recipe.name)
        self.dir = RunDir(self.path, write=dist_utils.is_main())
        cleanup.callback(self.dir.close)
        self.resolved = recipe_to_dict(recipe)
        self.cycles: list[dict[str, Any]] = []
        self.classes: list[str] | None = None
        self._scalars: TensorBoardScalars | None = None
        cleanup.callback(self._close_scalars)  # before the directory's lock is released (callbacks run last first)

    def check_target(self, overwrite: bool) -> None:
        """A new run may go here: says what is there and what to do otherwise (nothing is written)."""
        on_main_rank(lambda: RunDir.check_target(self.path, overwrite), self.path)

    def begin(self, overwrite: bool) -> None:
        """Create the directory (every check has passed) and write ``recipe.resolved.yaml``."""
        dist_utils.barrier()  # every rank has checked the run directory before rank 0 creates it
        on_main_rank(lambda: self.dir.create(overwrite=overwrite), self.path)
        self.dir.write_text("recipe.resolved.yaml", yaml.safe_dump(self.resolved, sort_keys=False))
        self.dir.write_json(CLASSES_FILE, {"dataset": self.recipe.data.name, "classes": self.classes})

    def log_taken_lock(self, reporter: ProgressReporter) -> None:
        if self.dir.stale_lock:
            reporter.log(f"took over the lock of a writer that no longer runs ({describe_holder(self.dir.stale_lock)})")

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        self.dir.append_metrics({"type": "epoch", **metrics})
        if self.scalars is not None:
            self.scalars.epoch(metrics)

    def save_cycle(self, model: nn.Module, summary: dict[str, Any]) -> None:
        """A finished cycle: its trained parameters, or the pruned model (``output.save_adapters``, see
        :func:`cycle_tensors`), its line in ``metrics.jsonl`` and its row in ``metrics.csv``.

        The trained file's metadata carries what rebuilding the model from that file alone takes
        (``prunekit.load(file, backbone=...)``): the resolved recipe, the widths and the class names.
        """
        if self.recipe.output.save_adapters:
            cycle, pruned = summary["cycle"], summary.get("pruned")
            path = self.dir.model_file(cycle) if pruned == "backbone" else self.dir.adapter_file(cycle)
            nbytes = self.dir.save_tensors(path, cycle_tensors(model, pruned), {
                "recipe": self.recipe.name, "cycle": cycle, "widths": json.dumps(summary["widths"]),
                "recipe_resolved": json.dumps(self.resolved, separators=(",", ":")),
                "classes": json.dumps(self.classes, separators=(",", ":"))})
            summary.update(adapter_file=str(path.relative_to(self.dir.path)), adapter_bytes=nbytes)
        self.cycles.append(summary)
        self.dir.append_metrics(summary)
        self.dir.write_text("metrics.csv", cycles_csv(self.cycles))
        if self.scalars is not None:
            self.scalars.cycle(summary)

    @property
    def scalars(self) -> TensorBoardScalars | None:
        """TensorBoard's writer (``output.tensorboard``), opened on the first scalar; None when not writing."""
        if self._scalars is None and self.recipe.output.tensorboard and self.dir.write:
            self._scalars = TensorBoardScalars(self.dir, self.recipe.train.epochs)
        return self._scalars

    def _close_scalars(self) -> None:
        if self._scalars is not None:
            self._scalars.close()
            self._scalars = None

    def save_plans(self, plans: list) -> None:
        self.dir.save_plans(plans)

    def finish(self, model: nn.Module, reporter: ProgressReporter, backbone_bytes: int, plot: bool) -> RunResult:
        """Checkpoint, report, plot (``plot``: the run pruned), ``DONE``; ``resume.pt`` (and a distilling run's
        ``teacher.safetensors``) go.

        A checkpoint that could not go to ``output.save_checkpoint`` is kept in the run directory and its error
        raised once the run is finished.
        """
        recipe, main_rank = self.recipe, dist_utils.is_main()
        checkpoint_error = None
        if recipe.output.save_checkpoint and main_rank:
            checkpoint_error = save_checkpoint(recipe, model, self.dir, reporter, self.cycles)
        result = RunResult(self.dir.path, self.cycles, backbone_bytes)
        if main_rank:
            write_report(self.dir, recipe, self.cycles, backbone_bytes)
            if recipe.output.plot and plot:
                backbone = recipe.strategy.groups == "backbone"
                with self.dir.writing(plot_file(recipe)) as plot_path:
                    plot_widths(self.cycles, plot_path, title=f"{run_title(recipe, self.path)}: " + (
                        "units kept per group" if backbone else "neurons per adapter"))
            self.dir.finish()
            self.dir.remove(STATE_FILE)  # DONE is written: nothing left to resume
            self.dir.remove(TEACHER_FILE)
        dist_utils.barrier()  # a checkpoint rank 0 wrote is on disk before any rank goes on to use it
        reporter.log(result.table())
        if checkpoint_error is not None:
            raise checkpoint_error
        return result
