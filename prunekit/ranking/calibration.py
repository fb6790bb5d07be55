"""Calibration passes: what activation and gradient scorers read, collected on a few batches of the user's data.

:func:`gather_stats` runs what a scorer asks for (``fn.needs_activations``: the mean absolute output of every unit,
:func:`collect_activations`; ``fn.needs_gradients``: ``|w * dL/dw|`` summed over the batches, :func:`collect_taylor`)
and returns the :class:`~prunekit.ranking.scorers.ScoreStats` handed to every scorer call. Hooks are removed and the
model's mode, ``requires_grad`` flags and gradients are restored in ``finally``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..registry import PrunekitError
from .scorers import Scorer, ScoreStats, needs_activations, needs_gradients

__all__ = ["collect_activations", "collect_taylor", "gather_stats"]


def _channel_dim(group: Any) -> int:
    return 1 if isinstance(getattr(group, "root", None), (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


@torch.no_grad()
def collect_activations(
        model: nn.Module,
        groups: Iterable[Any],
        batches: Iterable,
        forward_fn: Callable[[nn.Module, object], object] | None = None,
        max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Mean |activation| per unit of every group, accumulated over all ``batches`` (eval mode, no grad).

    The activation is the output of ``group.activation`` (the adapter's phi) or, when a group has none, of its root
    producer; a unit of G channels averages them. A batch is a tensor or a ``(inputs, targets)`` pair. Hooks are
    removed whatever happens.
    """
    groups = list(groups)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {g.name: 0 for g in groups}
    handles = []

    def make_hook(g: Any):
        dim = _channel_dim(g)
        per_unit = getattr(g, "channel_groups", 1)

        def hook(_module, _inputs, out):
            a = out.detach().abs().float().movedim(dim, -1).reshape(-1, g.width * per_unit)
            if per_unit > 1:
                a = a.reshape(-1, per_unit, g.width).mean(1)
            sums[g.name] = sums.get(g.name, 0) + a.sum(0)
            counts[g.name] += a.shape[0]

        return hook

    for g in groups:
        if not hasattr(g, "activation") or not isinstance(getattr(g, "root", None), nn.Module):
            raise PrunekitError(f"collect_activations: group {g.name!r} (kind {getattr(g, 'kind', '?')!r}) has no "
                                "activation to record; use a weight or gradient scorer for it")
    was_training = model.training
    model.eval()
    try:
        for g in groups:
            target = g.activation if g.activation is not None else g.root
            handles.append(target.register_forward_hook(make_hook(g)))
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward_fn(model, x) if forward_fn is not None else model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not any(counts.values()):
        raise PrunekitError("collect_activations: the calibration batches were empty")
    return {name: sums[name] / counts[name] for name in sums}


def collect_taylor(
        model: nn.Module,
        batches: Iterable,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        forward_fn: Callable[[nn.Module, object], object] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, nn.Parameter]]:
    """``sum over batches of |w * dL/dw|`` for every parameter (eval mode), from ``(inputs, targets)`` batches.

    ``loss_fn(outputs, targets)`` defaults to cross-entropy; a batch without targets needs a ``loss_fn`` that takes
    ``targets=None``. Gradients and ``requires_grad`` flags the model had are restored afterwards.
    """
    loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
    params = {id(p): p for p in model.parameters()}
    flags = {k: p.requires_grad for k, p in params.items()}
    grads = {k: p.grad for k, p in params.items()}
    sal: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    n = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        for batch in batches:
            x, y = _split_batch(batch)
            for p in params.values():
                p.grad = None
            with torch.enable_grad():
                out = forward_fn(model, x) if forward_fn is not None else model(x)
                loss = loss_fn(out, y)
                loss.backward()
            for k, p in params.items():
                if p.grad is not None:
                    s = (p.detach() * p.grad.detach()).abs().float()
                    sal[k] = sal[k] + s if k in sal else s
            n += 1
    finally:
        for k, p in params.items():
            p.grad = grads[k]
            p.requires_grad_(flags[k])
        model.train(was_training)
    if not n:
        raise PrunekitError("collect_taylor: the calibration batches were empty")
    return sal, params


def gather_stats(model: nn.Module, groups: list, scorer: Scorer, batches: Iterable | None, *,
                 generator: torch.Generator | None = None, loss_fn: Callable | None = None) -> ScoreStats:
    """The :class:`ScoreStats` ``scorer`` needs: activations and / or Taylor saliencies from ``batches``."""
    stats = ScoreStats(generator=generator)
    if needs_activations(scorer) or needs_gradients(scorer):
        if batches is None:
            raise PrunekitError(f"scorer {getattr(scorer, '__name__', scorer)!r} needs calibration batches")
        batches = list(batches)
        if needs_activations(scorer):
            stats.activations = collect_activations(model, groups, batches)
        if needs_gradients(scorer):
            stats.saliency, stats.params = collect_taylor(model, batches, loss_fn)
    return stats
