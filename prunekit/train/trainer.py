"""The training loop the CLI uses: AdamW, linear warm-up then cosine decay in every cycle, bf16 where supported.

It plugs into :class:`~prunekit.engine.iterative.Engine` as ``train_fn`` (``trainer.train_cycle``) and
``optimizer_factory`` (``trainer.make_optimizer``); nothing in the engine depends on it. Under ``torchrun`` it wraps the
model in DistributedDataParallel for each cycle (the structure changes between cycles) and all-reduces its metrics; see
distributed.py for how the global batch is split so that the gradients equal one process's. Given a ``teacher``
(:class:`~prunekit.engine.distill.Teacher`, the engine passes one to the cycles after a prune when it distills) the
loss is :func:`~prunekit.engine.distill.distillation_loss` of the student's and the teacher's logits.
"""
from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..core import distributed as dist_utils
from ..engine.distill import Teacher
from ..registry import PrunekitError
from .resume import capture_rng, restore_rng

__all__ = ["Trainer", "NonFiniteLossError", "select_device", "resolve_precision", "seed_everything",
           "param_groups", "warmup_cosine"]


class NonFiniteLossError(PrunekitError, FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PrunekitError(f"train.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError(f"train.device: {name!r} requested but CUDA is not available on this machine; use 'auto'")
    return device


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True when bf16 autocast is used: always for 'bf16', on CUDA with bf16 support for 'auto'."""
    if precision == "bf16":
        return True
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return False


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, not on biases and norm scales (timm's ``param_groups_weight_decay``)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Trains one cycle at a time and evaluates after every epoch.

    Args:
        cfg: the recipe's ``train`` section.
        train_loader, val_loader: batches of ``(images, labels)``.
        device: where to train.
        reporter: a :class:`~prunekit.run.progress.ProgressReporter` (optional).
        on_epoch_end: ``fn(metrics)`` after each epoch (the run directory appends it to ``metrics.jsonl``).
        on_checkpoint: ``fn(state)`` after each epoch (and its ``on_epoch_end``) with what a resume needs:
            cycle, epoch, optimizer and scheduler state, the cycle's best / last metrics, RNG states.
        on_step: ``fn(info)`` after each training step: ``cycle``, ``epoch``, ``step`` (0-based), ``steps`` (this
            epoch's), ``epoch_start`` (``time.perf_counter()`` when the epoch's first step began) and ``device`` (to
            synchronise before reading the clock; the run's duration estimate does, for its first steps only).

    Attributes:
        resume_from: a state given to ``on_checkpoint`` earlier; the next ``train_cycle`` of that cycle restores it
            and continues after its epoch (then it is cleared).
    """

    def __init__(self, cfg, train_loader, val_loader, device: torch.device, reporter=None,
                 on_epoch_end: Callable[[dict], None] | None = None,
                 on_checkpoint: Callable[[dict], None] | None = None,
                 on_step: Callable[[dict], None] | None = None):
        self.cfg = cfg
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device = device
        self.bf16 = resolve_precision(cfg.precision, device)
        self.reporter = reporter
        self.on_epoch_end = on_epoch_end
        self.on_checkpoint = on_checkpoint
        self.on_step = on_step
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.criterion_sum = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")
        self.global_step = 0
        self.resume_from: dict[str, Any] | None = None

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        groups = param_groups(params, self.cfg.weight_decay)
        if self.cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.cfg.lr)
        return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def steps_per_epoch(self) -> int:
        n = len(self.train_loader)
        return n if self.cfg.max_steps_per_epoch is None else min(n, self.cfg.max_steps_per_epoch)

    @property
    def loader_generator(self) -> torch.Generator | None:
        return getattr(self.train_loader, "generator", None)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model for one cycle (the structure changes between cycles); the model itself otherwise."""
        if not dist_utils.is_distributed():
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def train_cycle(self, model: nn.Module, optimizer: torch.optim.Optimizer, cycle: int,
                    teacher: Teacher | None = None) -> dict[str, Any]:
        """``cfg.epochs`` epochs with warm-up + cosine (distilled from ``teacher`` when given); returns best / last
        validation top-1 of the cycle."""
        cfg = self.cfg
        steps = self.steps_per_epoch()
        total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
        min_ratio = cfg.min_lr / cfg.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, total, warmup, min_ratio))
        model.to(self.device)
        if teacher is not None:
            teacher.to(self.device)
        best, best_epoch, last, start = -1.0, -1, None, 0
        state = self.resume_from
        if state is not None and state["cycle"] == cycle:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            best, best_epoch, last = state["best"], state["best_epoch"], state["last"]
            self.global_step, start = state["global_step"], state["epoch"] + 1
            restore_rng(state["rng"], self.loader_generator)
            self.resume_from = None
        net = self._wrap(model)
        for epoch in range(start, cfg.epochs):
            metrics = self.train_epoch(net, optimizer, scheduler, cycle, epoch, steps, teacher)
            metrics.update({f"val_{k}": v for k, v in self.evaluate(model).items()})
            metrics["val_acc"] = metrics.pop("val_top1")
            if metrics["val_acc"] > best:
                best, best_epoch = metrics["val_acc"], epoch
            last = metrics
            if self.reporter is not None:
                self.reporter.end_epoch(metrics)
            if self.on_epoch_end is not None:
                self.on_epoch_end(metrics)
            if self.on_checkpoint is not None:
                self.on_checkpoint({"cycle": cycle, "epoch": epoch, "global_step": self.global_step,
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "best": best, "best_epoch": best_epoch, "last": last,
                                    "rng": capture_rng(self.loader_generator)})
        return {"best_top1": best, "best_epoch": best_epoch, "last_top1": last["val_acc"],
                "train_loss": last["train_loss"], "train_acc": last["train_acc"],
                "images_per_s": last["images_per_s"], "epochs": cfg.epochs, "distilled": teacher is not None}

    def loss(self, logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None, teacher: Teacher | None,
             reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy (label smoothing as configured), or with a teacher the distillation loss around it."""
        hard = self.criterion if reduction == "mean" else self.criterion_sum
        if teacher is None:
            return hard(logits.float(), y)
        return teacher.loss(logits, teacher_logits, y, hard=hard, reduction=reduction)

    def train_epoch(self, model, optimizer, scheduler, cycle: int, epoch: int, steps: int,
                    teacher: Teacher | None = None) -> dict[str, Any]:
        model.train()
        if self.reporter is not None:
            self.reporter.start_epoch(epoch, self.cfg.epochs, steps)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(cycle * 100_000 + epoch)
        distributed, world = dist_utils.is_distributed(), dist_utils.world_size()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader):
            if step >= steps:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = model(x)
                teacher_logits = None if teacher is None else teacher.logits(x)
            if distributed:
                # This rank holds a slice of the global batch: sum its losses and scale by world / global size,
                # so DDP's gradient average is the mean over the global batch, as in one process.
                local_sum = self.loss(logits, y, teacher_logits, teacher, reduction="sum")
                both = dist_utils.all_reduce_sum(torch.stack([local_sum.detach(), torch.tensor(
                    float(len(y)), device=self.device)]))
                batch_loss, global_n = both[0] / both[1], both[1]
                loss = local_sum * (world / global_n)
            else:
                loss = batch_loss = self.loss(logits, y, teacher_logits, teacher)
            if not torch.isfinite(batch_loss):
                raise NonFiniteLossError(
                    f"loss is {batch_loss.item()} at cycle {cycle}, epoch {epoch + 1}, step {step + 1} (global step "
                    f"{self.global_step + 1}); training stopped. The state of the last finished epoch is kept: lower "
                    "train.lr (or set train.grad_clip) and start again, or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            self.global_step += 1
            loss_sum += local_sum.detach() if distributed else loss.detach() * len(y)
            correct += (logits.argmax(-1) == y).sum()
            seen += len(y)
            if self.reporter is not None and self.reporter.rich:
                dt = time.perf_counter() - t0
                self.reporter.step(batch_loss.item(), correct.item() / max(seen, 1), world * seen / max(dt, 1e-9))
            if self.on_step is not None:
                self.on_step({"cycle": cycle, "epoch": epoch, "step": step, "steps": steps, "epoch_start": t0,
                              "device": self.device})
        dt = time.perf_counter() - t0
        sums = dist_utils.all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                                      torch.tensor(float(seen), device=self.device)]))
        loss_total, correct_total, seen_total = sums.tolist()
        return {"cycle": cycle, "epoch": epoch, "train_loss": loss_total / max(seen_total, 1),
                "train_acc": correct_total / max(seen_total, 1), "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": seen_total / max(dt, 1e-9), "epoch_time_s": dt, "steps": min(steps, step + 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader=None) -> dict[str, float]:
        """Top-1 accuracy and mean loss on the validation set (or ``loader``)."""
        model.eval()
        model.to(self.device)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, seen
        for x, y in (loader if loader is not None else self.val_loader):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = model(x).float()
            sums[0] += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == y).sum()
            sums[2] += len(y)
        # In a distributed run each rank evaluated its shard (distributed.ShardSampler): add them up.
        loss_sum, correct, seen = dist_utils.all_reduce_sum(sums).tolist()
        if seen == 0:
            raise PrunekitError("evaluation set is empty")
        return {"top1": correct / seen, "loss": loss_sum / seen}
