"""Neuron importance scores: ``scorer(group, stats) -> Tensor[n]``, higher = more important.

A scorer is any plain callable with that signature, so a user can pass their own function wherever a name is
accepted. The built-ins, registered by name (TINA, Sec. 3.3 and Table 3):

- ``l1_down``: vanilla L1, the producer row only, ``sum_k |W_down[j, k]|``;
- ``l1_activation``: ``mean |phi(W_down h)_j|`` over calibration batches, L1(a);
- ``coupled_l1``: the paper's I_0, down row + up column, ``sum_k |W_down[j, k]| + sum_k |W_up[k, j]|``;
- ``tina``: Eq. 2, I = I_0 / (n_i + m_i), comparable across adapters of different sizes;
- ``random``: a uniform draw (a control).

Composition helpers: :func:`scaled` divides any score by a per-group normaliser, :func:`combine` takes a weighted sum.
A scorer that needs activations says so with ``fn.needs_activations = True``; the engine then runs a calibration pass
(:func:`collect_activations`) and hands the result in ``stats.activations``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

import torch
from torch import nn

from .graph import Group
from .registry import PrunekitError, Registry

__all__ = [
    "Scorer",
    "ScoreStats",
    "SCORERS",
    "register_scorer",
    "get_scorer",
    "needs_activations",
    "l1_down",
    "l1_activation",
    "coupled_l1",
    "tina",
    "random_score",
    "scaled",
    "combine",
    "NORMALIZERS",
    "collect_activations",
    "score_groups",
]


@dataclass
class ScoreStats:
    """What a scorer may use besides the weights.

    Attributes:
        activations: group name -> mean |activation| per neuron, filled when a scorer needs activations.
        generator: random source for stochastic scorers (seeded by the engine, so runs repeat).
    """

    activations: Mapping[str, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None


class Scorer(Protocol):
    def __call__(self, group: Group, stats: ScoreStats) -> torch.Tensor: ...


SCORERS: Registry[Scorer] = Registry("scorer", entry_point_group="prunekit.scorers", import_paths=True)


def register_scorer(name: str, fn: Scorer | None = None, *, overwrite: bool = False):
    """Register a scorer under ``name`` (usable as a decorator)."""
    return SCORERS.register(name, fn, overwrite=overwrite)


def get_scorer(name_or_fn: str | Scorer) -> Scorer:
    """A registered scorer by name, or the callable itself."""
    return name_or_fn if callable(name_or_fn) else SCORERS.get(name_or_fn)


def needs_activations(scorer: Scorer) -> bool:
    return bool(getattr(scorer, "needs_activations", False))


def _l1_rows(mats: list[torch.Tensor], n: int, device) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float32, device=device)
    for w in mats:
        out += w.detach().abs().float().sum(dim=1)
    return out


@register_scorer("l1_down")
def l1_down(group: Group, stats: ScoreStats) -> torch.Tensor:
    """Vanilla L1: ``sum_k |W_down[j, k]|`` over the producer rows only (Table 3, "Vanilla L1")."""
    return _l1_rows(group.rows(), group.width, group.root.weight.device)


@register_scorer("coupled_l1")
def coupled_l1(group: Group, stats: ScoreStats) -> torch.Tensor:
    """I_0: ``sum_k |W_down[j, k]| + sum_k |W_up[k, j]|``, the down row plus the up column, unscaled."""
    return _l1_rows(group.rows() + group.columns(), group.width, group.root.weight.device)


def _norm_paper(group: Group) -> float:
    return group.width + group.fan


def _norm_terms(group: Group) -> float:
    return sum(w.shape[1] for w in group.rows() + group.columns())


# The paper normalises by n_i + m_i (Eq. 2); the number of weights actually summed is m_i + m_i in an adapter.
NORMALIZERS: dict[str, Callable[[Group], float]] = {"n+m": _norm_paper, "terms": _norm_terms}


def scaled(scorer: Scorer, normalizer: str | Callable[[Group], float] = "n+m") -> Scorer:
    """``scorer`` divided by a per-group normaliser: ``'n+m'`` (Eq. 2), ``'terms'`` or ``fn(group) -> float``.

    Within one group this changes nothing; across groups it makes big and small adapters comparable.
    """
    if isinstance(normalizer, str):
        if normalizer not in NORMALIZERS:
            raise PrunekitError(f"normalizer: unknown {normalizer!r}; allowed: {', '.join(NORMALIZERS)} or a callable")
        norm = NORMALIZERS[normalizer]
    else:
        norm = normalizer

    def scaled_scorer(group: Group, stats: ScoreStats) -> torch.Tensor:
        return scorer(group, stats) / norm(group)

    scaled_scorer.needs_activations = needs_activations(scorer)
    scaled_scorer.__name__ = f"scaled_{getattr(scorer, '__name__', 'scorer')}"
    return scaled_scorer


def combine(*scorers: Scorer, weights: Iterable[float] | None = None) -> Scorer:
    """Weighted sum of scorers (weights default to 1)."""
    weights = list(weights) if weights is not None else [1.0] * len(scorers)
    if len(weights) != len(scorers):
        raise ValueError(f"combine: {len(scorers)} scorers but {len(weights)} weights")

    def combined(group: Group, stats: ScoreStats) -> torch.Tensor:
        return sum(w * s(group, stats) for w, s in zip(weights, scorers))

    combined.needs_activations = any(needs_activations(s) for s in scorers)
    return combined


@register_scorer("tina")
def tina(group: Group, stats: ScoreStats) -> torch.Tensor:
    """Eq. 2: ``I_j = (sum_k |W_down[j, k]| + sum_k |W_up[k, j]|) / (n_i + m_i)``."""
    return coupled_l1(group, stats) / _norm_paper(group)


@register_scorer("l1_activation")
def l1_activation(group: Group, stats: ScoreStats) -> torch.Tensor:
    """L1(a): mean |activation| of each neuron over the calibration batches."""
    if group.name not in stats.activations:
        raise PrunekitError(f"l1_activation: no activations recorded for group {group.name!r}; "
                            "the engine needs calibration batches (calibration=...) for this scorer")
    return stats.activations[group.name].float()


l1_activation.needs_activations = True


@register_scorer("l1_activation_scaled")
def l1_activation_scaled(group: Group, stats: ScoreStats) -> torch.Tensor:
    """L1(a) divided by n_i + m_i (Table 3's global L1(a) rows, "Scaling" ticked)."""
    return l1_activation(group, stats) / _norm_paper(group)


l1_activation_scaled.needs_activations = True


@register_scorer("random")
def random_score(group: Group, stats: ScoreStats) -> torch.Tensor:
    """Uniform random scores (a control)."""
    return torch.rand(group.width, generator=stats.generator)


def _channel_dim(group: Group) -> int:
    return 1 if isinstance(group.root, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1


@torch.no_grad()
def collect_activations(
        model: nn.Module,
        groups: Iterable[Group],
        batches: Iterable,
        forward_fn: Callable[[nn.Module, object], object] | None = None,
        max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Mean |activation| per neuron of every group, accumulated over all ``batches`` (eval mode, no grad).

    The activation is the output of ``group.activation`` (the adapter's phi) or, when a group has none, of its root
    producer. A batch is a tensor or a ``(inputs, targets)`` pair. Hooks are removed whatever happens.
    """
    groups = list(groups)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {g.name: 0 for g in groups}
    handles = []

    def make_hook(g: Group):
        dim = _channel_dim(g)

        def hook(_module, _inputs, out):
            a = out.detach().abs().float().movedim(dim, -1).reshape(-1, g.width)
            sums[g.name] = sums.get(g.name, 0) + a.sum(0)
            counts[g.name] += a.shape[0]

        return hook

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


def score_groups(groups: Iterable[Group], scorer: Scorer, stats: ScoreStats | None = None) -> dict[str, torch.Tensor]:
    """Run ``scorer`` on every group; checks each result is one finite number per neuron."""
    stats = stats if stats is not None else ScoreStats()
    out = {}
    for g in groups:
        s = scorer(g, stats)
        if not isinstance(s, torch.Tensor) or s.shape != (g.width,):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise PrunekitError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned {shape} for group "
                                f"{g.name!r}; expected a tensor of shape ({g.width},), one score per neuron")
        if not torch.isfinite(s).all():
            raise PrunekitError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned non-finite scores for "
                                f"group {g.name!r}")
        out[g.name] = s.detach().float().cpu()
    return out
