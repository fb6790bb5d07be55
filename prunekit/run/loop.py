"""Train: the cycles of a run, through the engine's prune-and-fine-tune loop or, for strategy 'none', one after another.

:meth:`CycleLoop.train_cycle` is the engine's ``train_fn``: it trains one cycle with the
:class:`~prunekit.train.trainer.Trainer` and hands the cycle's summary (widths, sigma, parameters, MACs, batch-1
latency, top-1, throughput, wall time) to the run record.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import torch
from torch import nn

from ..core import distributed as dist_utils
from ..budget.cost import model_cost
from ..errors import PrunekitError
from ..models.params import count_parameters
from .progress import ProgressReporter
from ..recipe.spec import Recipe
from ..engine.distill import Teacher
from ..train.trainer import Trainer
from .build import example_inputs
from .check import Checked
from .estimate import RunClock, Workload
from .prune import engine_widths, make_engine
from .record import RunRecord, trained_state
from .task import Task

__all__ = ["CycleLoop"]


class CycleLoop:
    """Trains ``model`` for the recipe's cycles; builds (and so checks) the engine when the recipe prunes.

    Attributes:
        trainer: trains and evaluates one cycle at a time.
        engine: the pruning engine, or None for strategy 'none'.
        cycles: training cycles, the first included.
        clock: logs the run's estimated duration after its first training steps.
    """

    def __init__(self, recipe: Recipe, checked: Checked, model: nn.Module, task: Task, device: torch.device,
                 reporter: ProgressReporter, record: RunRecord):
        self.recipe, self.model, self.reporter, self.record = recipe, model, reporter, record
        self.trainer = Trainer(recipe.train, task.train, task.val, device, reporter, on_epoch_end=record.log_epoch)
        self.engine = None
        self.cycles = recipe.strategy.cycles
        self.device = device
        self._clock = time.perf_counter()  # end of the previous cycle: a cycle's wall time includes its prune
        if checked.strategy is not None:
            self.engine = make_engine(recipe, checked.strategy, model, self.train_cycle, task,
                                      self.trainer.make_optimizer, device, record, reporter)
            self.cycles = self.engine.cycles
        world = dist_utils.world_size()  # this process trains and evaluates its share of every batch
        distilled = 0
        if self.engine is not None and self.engine.distill is not None and self.engine.first_prune is not None:
            distilled = self.cycles - 1 - self.engine.first_prune
        work = Workload(self.cycles, recipe.train.epochs, self.trainer.steps_per_epoch(),
                        math.ceil(len(task.bundle.val) / world), distilled)
        self.clock = RunClock(work, math.ceil(recipe.train.batch_size / world), reporter)
        self.trainer.on_step = self.clock.on_step

    def run(self, start_cycle: int = 0) -> None:
        """Train cycles ``start_cycle`` .. ``cycles - 1``; the plans that were applied go to ``plan.json``."""
        self._clock = time.perf_counter()
        if self.engine is not None:
            self.engine.run(start_cycle)
            self.record.save_plans(self.engine.plans)
            return
        for cycle in range(start_cycle, self.cycles):
            self.train_cycle(self.model, self.trainer.make_optimizer(
                [p for p in self.model.parameters() if p.requires_grad]), cycle)
        self.record.save_plans([])

    def train_cycle(self, model: nn.Module, optimizer: torch.optim.Optimizer, cycle: int,
                    teacher: Teacher | None = None) -> dict[str, Any]:
        """One cycle of training (distilled from ``teacher`` when the engine gives one), then its summary recorded;
        returns the trainer's metrics (the engine keeps them)."""
        self.reporter.start_cycle(cycle, self.cycles, f"trainable {count_parameters(model, True):,}"
                                  + ("; distilled from the teacher" if teacher is not None else ""))
        metrics = self.trainer.train_cycle(model, optimizer, cycle, teacher)
        widths, sigma = engine_widths(self.engine, self.recipe)
        cost = model_cost(model, example_inputs(self.recipe, self.device),
                          autocast_dtype=torch.bfloat16 if self.trainer.bf16 else None)
        summary = {"type": "cycle", "cycle": cycle, "pruned": self.pruned, "widths": widths, "sigma": sigma,
                   "trainable_params": count_parameters(model, trainable_only=True),
                   "total_params": count_parameters(model), "macs": cost.macs, "latency_ms": cost.latency_ms,
                   "best_top1": metrics["best_top1"], "last_top1": metrics["last_top1"],
                   "adapter_file": None, "adapter_bytes": None, "images_per_s": metrics["images_per_s"]}
        if self.engine is not None and self.engine.distill is not None:
            summary["distilled"] = teacher is not None
        if dist_utils.is_distributed():
            summary["rank_digests"] = _check_ranks_agree(model, widths, cycle)
        now = time.perf_counter()
        summary["wall_s"] = now - self._clock  # since the previous cycle ended: its prune, training and evaluation
        self._clock = now
        self.record.save_cycle(model, summary)
        return metrics

    @property
    def pruned(self) -> str | None:
        """What the run prunes: ``'adapters'``, ``'backbone'``, or None (strategy 'none')."""
        return None if self.engine is None else self.recipe.strategy.groups


def _check_ranks_agree(model: nn.Module, widths: dict[str, int], cycle: int) -> list[str]:
    """Digest of every rank's trained weights and widths; they must be identical after a cycle of DDP training."""
    digests = dist_utils.all_gather_object(dist_utils.digest_tensors(trained_state(model)) + ":"
                                           + json.dumps(widths, sort_keys=True))
    if len(set(digests)) > 1:
        raise PrunekitError(f"cycle {cycle}: ranks disagree after training (weight / width digests {digests}); "
                            "check that every rank runs the same recipe and prunekit version")
    return [dg.split(":", 1)[0] for dg in digests]
