"""Estimate: how long a run takes, before it starts (``--dry-run``) and from its first steps (the run's log).

Both count the work from the schedule, ``cycles x epochs x steps`` training steps of ``train.batch_size`` images plus
one pass over the validation set per epoch, and multiply by a measured speed:

- the dry run times two training steps (forward, backward, optimizer step) of the built model on random images on the
  run's device; where the whole batch would take long (a large model on a CPU), on fewer images, scaled to the batch
  (:func:`probe_speed`);
- the run times its own first training steps (:class:`RunClock`).

Both count an evaluation image as a third of a training image (a forward without the backward). A run that distils
(``train.distill``) adds a teacher forward to every training step of the cycles after the first prune: the dry run
times it, the run counts it as a third of its step. They are estimates:
later cycles train fewer adapter neurons (a little faster), data loading may cost more than the dry run's random
batches, a probe scaled from a few images overstates a small model's step, and a shared machine's speed changes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..budget.cost import synchronize
from .progress import ProgressReporter
from ..recipe.spec import Recipe
from ..train.trainer import Trainer, resolve_precision

__all__ = ["Workload", "Speed", "probe_speed", "RunClock", "format_duration", "EVAL_SHARE", "PROBE_SECONDS",
           "FIRST_STEPS"]

EVAL_SHARE = 1 / 3  # an evaluation image costs about a third of a training image (forward only)
PROBE_SECONDS = 1.0  # the dry run's timed step is sized to take about this long
FIRST_STEPS = 10  # the run's estimate follows this many training steps (or the first epoch, if shorter)


@dataclass(frozen=True)
class Workload:
    """What a run does, counted from its schedule.

    Attributes:
        cycles: training cycles.
        epochs: epochs per cycle.
        steps_per_epoch: training steps per epoch (None: the data's size is unknown).
        val_images: images evaluated after every epoch (None: unknown).
        distilled_cycles: the last cycles, which run the teacher's forward at every step (``train.distill``).
    """

    cycles: int
    epochs: int
    steps_per_epoch: int | None
    val_images: int | None
    distilled_cycles: int = 0

    @staticmethod
    def steps(train_images: int | None, recipe: Recipe) -> int | None:
        """Training steps per epoch for ``train_images`` images (as the trainer counts them)."""
        if train_images is None:
            return None
        steps = math.ceil(train_images / recipe.train.batch_size)
        cap = recipe.train.max_steps_per_epoch
        return steps if cap is None else min(steps, cap)

    def seconds(self, step_s: float, eval_image_s: float, from_epoch: int = 0,
                teacher_step_s: float = 0.0) -> float | None:
        """Wall time of the epochs from ``from_epoch`` (counted over all cycles) to the end, a teacher's forward
        (``teacher_step_s`` per step) in the distilled cycles; None when unknown."""
        if self.steps_per_epoch is None or self.val_images is None:
            return None
        epochs = self.cycles * self.epochs - from_epoch
        distilled = min(epochs, self.distilled_cycles * self.epochs)
        return (epochs * (self.steps_per_epoch * step_s + self.val_images * eval_image_s)
                + distilled * self.steps_per_epoch * teacher_step_s)


@dataclass(frozen=True)
class Speed:
    """Seconds per training step of ``train.batch_size`` images and per evaluated image, and how they were measured;
    ``teacher_step_s``: a teacher's forward on a training batch (0 when the recipe does not distil)."""

    step_s: float
    eval_image_s: float
    how: str
    teacher_step_s: float = 0.0


def probe_speed(model: nn.Module, recipe: Recipe, device: torch.device) -> Speed:
    """Time the recipe's training step on ``model`` (trains its parameters: use a throw-away model).

    A first step on two images (not timed: it pays one-off costs) sizes a second, timed step to take about
    :data:`PROBE_SECONDS`, up to the whole batch; a smaller probe is scaled to ``train.batch_size`` per image, which
    overstates the time of a model too small to keep the device busy.
    """
    t = recipe.train
    bf16 = resolve_precision(t.precision, device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = Trainer(t, None, None, device).make_optimizer(params) if params else None
    gen = torch.Generator().manual_seed(t.seed)
    shape = (recipe.model.in_chans, recipe.model.img_size, recipe.model.img_size)

    def step(n: int) -> float:
        x = torch.randn(n, *shape, generator=gen).to(device)
        synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), torch.zeros(n, dtype=torch.long, device=device))
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        return time.perf_counter() - t0

    first = min(2, t.batch_size)  # two images: a model with batch norm cannot train on one
    warm = step(first)
    n = max(first, min(t.batch_size, int(PROBE_SECONDS * first / max(warm, 1e-9))))
    per_image = step(n) / n
    how = (f"2 training steps timed on {device.type}" if n == t.batch_size else
           f"2 training steps timed on {device.type}, the second on {n} of {t.batch_size} images, scaled")
    teacher_s = 0.0
    if t.distill.teacher is not None:  # the teacher has the model's architecture: one forward of it, frozen
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model.eval()
            x = torch.randn(n, *shape, generator=gen).to(device)
            synchronize(device)
            t0 = time.perf_counter()
            model(x)
            synchronize(device)
            teacher_s = (time.perf_counter() - t0) / n * t.batch_size
            model.train()
        how += ", and one teacher forward"
    return Speed(per_image * t.batch_size, EVAL_SHARE * per_image, how, teacher_s)


class RunClock:
    """The run's estimate of its own duration, logged once after its first training steps.

    Plugs into :class:`~prunekit.train.trainer.Trainer` as ``on_step``: after :data:`FIRST_STEPS` steps (or the first
    epoch, if shorter) of the first epoch it trains, it logs ``estimated total: ~X`` for the whole run (elapsed + the
    rest).

    Args:
        work: the run's schedule and data.
        batch_size: images per step (evaluation is counted from the training speed per image).
        reporter: where the line goes.
        now: the clock (``time.perf_counter``; the trainer's ``epoch_start`` is read on the same clock).
    """

    def __init__(self, work: Workload, batch_size: int, reporter: ProgressReporter,
                 now: Callable[[], float] = time.perf_counter):
        self.work, self.batch_size, self.reporter, self.now = work, batch_size, reporter, now
        self.started = now()
        self.first_step_s: float | None = None
        self.estimate_s: float | None = None
        self.done = False

    def on_step(self, info: dict[str, Any]) -> None:
        """The trainer's ``on_step``: ``cycle``, ``epoch``, ``step`` (0-based), ``steps`` (of this epoch),
        ``epoch_start`` (perf_counter when the epoch began), ``device``."""
        if self.done:
            return
        synchronize(info["device"])
        seconds = self.now() - info["epoch_start"]
        if self.first_step_s is None:
            self.first_step_s = seconds
        k = info["step"] + 1
        if k < min(FIRST_STEPS, info["steps"]):
            return
        self.done = True
        # the first step pays one-off costs (allocations, kernel selection): the rate comes from the others
        step_s = (seconds - self.first_step_s) / (k - 1) if k > 1 else seconds
        epoch = info["cycle"] * self.work.epochs + info["epoch"]
        rest = self.work.seconds(step_s, EVAL_SHARE * step_s / self.batch_size, from_epoch=epoch,
                                 teacher_step_s=EVAL_SHARE * step_s)
        if rest is None:
            return
        rest -= k * step_s  # this epoch's steps so far are done
        self.estimate_s = self.now() - self.started + max(rest, 0.0)
        self.reporter.log(f"estimated total: ~{format_duration(self.estimate_s)} for {self.work.cycles} cycles x "
                          f"{self.work.epochs} epochs x {self.work.steps_per_epoch} steps (an estimate from the "
                          f"first {k} steps: {step_s:.3g} s/step)")


def format_duration(seconds: float) -> str:
    """``42 s`` (at least ``1 s``), ``12 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
