"""``run_recipe``: a recipe through the phases, check -> record -> build -> data -> train -> record.

Read :func:`run_recipe` as the table of contents; each line is one phase, in its own module of this package.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..core import distributed as dist_utils
from .progress import ProgressReporter
from ..recipe.spec import Recipe
from ..train.trainer import seed_everything, select_device
from .build import build_model
from .check import Checked, check_recipe, check_world
from .checkpoint import check_checkpoint_target
from .loop import CycleLoop
from .pretrain import ensure_checkpoint
from .record import RunRecord, RunResult
from .report import backbone_bytes
from .resuming import open_for_resume, restore, state_saver
from .task import Task, load_task

__all__ = ["run_recipe", "end_processes"]


def run_recipe(recipe: Recipe, out: str | Path | None = None, overwrite: bool = False,
               reporter: ProgressReporter | None = None, resume: bool = False) -> RunResult:
    """Train (and prune) as the recipe says; writes a run directory and returns its per-cycle summary.

    Everything that can be wrong with the recipe (names, checkpoint, data, schedule, the run directory and the
    checkpoint path) is found before the run directory is created, so a failed start writes nothing. The run
    directory is locked while this runs (see rundir.py, runlock.py); ``overwrite`` replaces only a prunekit run
    directory. ``resume=True`` continues the unfinished run in ``out`` from its ``resume.pt`` (see resuming.py), after
    checking that it belongs to that run. Under ``torchrun`` every rank calls this; rank 0 alone writes, locks and
    prints.
    """
    with contextlib.ExitStack() as cleanup:
        device, reporter = _start_process(recipe, reporter)
        checked = check_recipe(recipe)                                    # check: every name, every part
        check_world(recipe)
        record = RunRecord(recipe, out, cleanup)                          # record: may the run directory be written?
        if resume:
            state = open_for_resume(record)
        else:
            state = None
            record.check_target(overwrite)
        check_checkpoint_target(recipe)
        ensure_checkpoint(recipe, record.path.parent, reporter, run=run_recipe)  # build: pretrain the backbone first
        seed_everything(recipe.train.seed + dist_utils.rank(), recipe.train.deterministic)
        task = load_task(recipe, device, distributed=dist_utils.is_distributed())  # data
        record.classes = task.bundle.classes
        model = build_model(recipe, task.bundle.num_classes).to(device)   # build
        loop = CycleLoop(recipe, checked, model, task, device, reporter, record)  # train: checks the engine's plan
        if recipe.output.save_state:
            loop.trainer.on_checkpoint = state_saver(record, model, loop)
        if state is not None:                                             # record: resume, or a new directory
            start_cycle = restore(state, recipe, model, loop, record, task.bundle.num_classes)
            reporter.log(f"resuming {record.path}: cycle {start_cycle}, after epoch {state['trainer']['epoch'] + 1} "
                         f"of {recipe.train.epochs}")
        else:
            start_cycle = 0
            record.begin(overwrite)
        record.log_taken_lock(reporter)
        model_bytes = backbone_bytes(model)
        _announce(recipe, checked, task, device, loop, record, reporter)
        loop.run(start_cycle)                                             # train
        return record.finish(model, reporter, model_bytes, plot=checked.strategy is not None)  # record


def end_processes() -> bool:
    """Leave torchrun's process group once this process has run everything; True on the rank that prints."""
    dist_utils.shutdown()
    return dist_utils.is_main()


def _start_process(recipe: Recipe, reporter: ProgressReporter | None) -> tuple[torch.device, ProgressReporter]:
    """The device (this rank's under torchrun, which is joined here) and the reporter (silent off rank 0)."""
    device = select_device(recipe.train.device)
    device = dist_utils.init_from_env(device.type) or device
    if not dist_utils.is_main():
        return device, ProgressReporter(enabled=False)
    return device, reporter or ProgressReporter()


def _announce(recipe: Recipe, checked: Checked, task: Task, device: torch.device, loop: CycleLoop,
              record: RunRecord, reporter: ProgressReporter) -> None:
    world = dist_utils.world_size()
    reporter.log(f"run {recipe.name}: {recipe.model.name} + {checked.method.name}, data {task.bundle.describe()}, "
                 f"device {device}{' (bf16)' if loop.trainer.bf16 else ''}"
                 f"{f' x {world} processes' if world > 1 else ''}, {loop.cycles} cycle{'s' if loop.cycles != 1 else ''}"
                 f" of {recipe.train.epochs} epoch{'s' if recipe.train.epochs != 1 else ''} -> {record.path}")
