"""Knowledge distillation during recovery: the model as it was before its first prune teaches the pruned one.

Hinton et al. (2015), as ModelOpt's ``LogitsDistillationLoss`` and torch-pruning's DeiT / ConvNeXt recipes use it::

    loss = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The ``T^2`` keeps the soft term's gradients on the scale of the hard one's as ``T`` grows. The teacher (a
:class:`Teacher`) is frozen: its own copy of the weights, eval mode, no gradients; by default it is the model after
the first training cycle (an adapters run: the sigma_0 model; a backbone run: the unpruned network), snapshotted
by the :class:`~prunekit.engine.iterative.Engine` just before it first prunes, or a model the caller gives (a
checkpoint of the same task). It teaches the cycles that follow a prune (recovery); cycle 0 trains as before.
A resumed run rebuilds it (from the run's cycle-0 file): it is not stored every cycle.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..core.undo import output_shapes
from ..registry import PrunekitError

__all__ = ["Distill", "Teacher", "distillation_loss", "soft_kl", "check_takes_teacher", "checked_teacher"]


@dataclass(frozen=True)
class Distill:
    """How the pruned model learns from a teacher while it recovers.

    Attributes:
        alpha: weight of the soft (teacher) term, in [0, 1]; 0 is plain cross-entropy.
        temperature: softens both distributions (> 0); 1 compares the plain softmax outputs.
        teacher: the teacher model (a checkpoint of the same task, same outputs); None: the model as it was just
            before the first prune.
    """

    alpha: float = 0.5
    temperature: float = 4.0
    teacher: nn.Module | None = None

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise PrunekitError(f"distill.alpha: expected the soft term's weight in [0, 1], got {self.alpha!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
            raise PrunekitError(f"distill.temperature: expected a finite number > 0, got {t!r}")
        if self.teacher is not None and not isinstance(self.teacher, nn.Module):
            raise PrunekitError(f"distill.teacher: expected an nn.Module or None (the model before the first prune), "
                                f"got {type(self.teacher).__name__}")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            reduction: str = "mean") -> torch.Tensor:
    """``KL(softmax(z_t / T) || softmax(z_s / T))`` per sample (summed over classes), then the batch's mean or sum."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                      alpha: float, temperature: float, hard: Callable | None = None,
                      reduction: str = "mean") -> torch.Tensor:
    """``(1 - alpha) * hard(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``.

    Args:
        hard: the hard-label loss, reducing as ``reduction`` says (default: cross-entropy).
        reduction: ``'mean'`` over the batch or ``'sum'`` (a distributed rank sums its share, see the trainer).
    """
    if reduction not in ("mean", "sum"):
        raise PrunekitError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    if hard is None:
        ce = F.cross_entropy(student_logits.float(), targets, reduction=reduction)
    else:
        ce = hard(student_logits.float(), targets)
    soft = soft_kl(student_logits, teacher_logits.detach(), temperature, reduction)
    return (1.0 - alpha) * ce + alpha * temperature ** 2 * soft


class Teacher:
    """A frozen model whose logits a pruned model learns: its own weights, eval mode, no gradients.

    Args:
        model: the teacher; it is not copied (see :meth:`snapshot`), but frozen and put in eval mode.
        distill: alpha and temperature.

    Attributes:
        trained: names of the parameters that required grad before it was frozen.
    """

    def __init__(self, model: nn.Module, distill: Distill):
        self.model, self.distill = model, distill
        # what trained in the model it was taken from (a run writes these to rebuild it; the rest is the backbone's)
        self.trained = tuple(n for n, p in model.named_parameters() if p.requires_grad)
        model.eval()
        model.requires_grad_(False)

    @classmethod
    def snapshot(cls, model: nn.Module, distill: Distill) -> "Teacher":
        """A teacher from a deep copy of ``model`` as it is now (its later pruning and training do not touch it)."""
        return cls(copy.deepcopy(model), distill)

    @property
    def alpha(self) -> float:
        return self.distill.alpha

    @property
    def temperature(self) -> float:
        return self.distill.temperature

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, inputs: Any) -> torch.Tensor:
        """The teacher's outputs on ``inputs`` (in eval mode, whatever mode a caller left it in)."""
        if self.model.training:
            self.model.eval()
        out = self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)
        return getattr(out, "logits", out)

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
             hard: Callable | None = None, reduction: str = "mean") -> torch.Tensor:
        """:func:`distillation_loss` with this teacher's alpha and temperature."""
        return distillation_loss(student_logits, teacher_logits, targets, alpha=self.alpha,
                                 temperature=self.temperature, hard=hard, reduction=reduction)

    def __repr__(self) -> str:
        return f"Teacher({type(self.model).__name__}, alpha={self.alpha:g}, temperature={self.temperature:g})"


def checked_teacher(model: nn.Module, distill: Distill, shapes: list, example_inputs: Any) -> Teacher:
    """``model`` as a :class:`Teacher`, once its outputs on ``example_inputs`` have the student's ``shapes``."""
    try:
        theirs = output_shapes(model, example_inputs)
    except Exception as e:  # noqa: BLE001 - any failure of the teacher's forward is the caller's to fix
        raise PrunekitError(f"distill.teacher: the teacher does not run on the example inputs "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if theirs != shapes:
        raise PrunekitError(f"distill.teacher: its outputs have shapes {theirs}, the model's {shapes}; the teacher "
                            "must be a model of the same task (same classes)")
    return Teacher(model, distill)


def check_takes_teacher(train_fn: Callable) -> None:
    """With ``distill=`` the engine calls ``train_fn(model, optimizer, cycle, teacher=...)``: refuse a function
    that cannot take it, before any training."""
    try:
        params = inspect.signature(train_fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect, let the call say
        return
    if not any(p.name == "teacher" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        name = getattr(train_fn, "__qualname__", repr(train_fn))
        raise PrunekitError(f"distill: train_fn {name} takes no teacher= keyword; with distill= the engine calls "
                            "train_fn(model, optimizer, cycle, teacher=Teacher or None) (prunekit's "
                            "Trainer.train_cycle takes it; in your own loop add teacher.loss(student_logits, "
                            "teacher.logits(x), y))")
