"""Unit importance scores: ``scorer(group, stats) -> Tensor[n]``, higher = more important.

A scorer is any plain callable with that signature, so a user can pass their own function wherever a name is
accepted. It sees a group only through the group protocol (``rows()``, ``columns()``, ``width``, ``fan``; see
graph.py), so the same scorer ranks adapter neurons, conv channels and attention heads. The built-ins, registered by
name (TINA, Sec. 3.3 and Table 3, and the usual structured-pruning criteria):

- ``l1_down``: vanilla L1, the producer row only, ``sum_k |W_down[j, k]|``;
- ``l1`` (:func:`coupled_l1`): every weight tied to unit j, producer rows plus consumer columns (the paper's I_0);
- ``l2``: the L2 norm of those weights;
- ``tina``: Eq. 2, I = I_0 / (n_i + m_i), comparable across adapters of different sizes;
- ``l1_activation``: ``mean |phi(W_down h)_j|`` over calibration batches, L1(a); ``l1_activation_scaled``;
- ``taylor``: first-order Taylor, ``sum over calibration batches of sum_w |w * dL/dw|`` over every weight tied to
  the unit (Molchanov et al., 2019); needs ``(inputs, targets)`` batches and a loss (default cross-entropy);
- ``random``: a uniform draw (a control).

**Across unlike layers.** Raw magnitudes are not comparable between a 64-channel layer1 conv and a 2048-channel
layer4 conv, so a global ranking of raw L1 prunes whole stages. :func:`normalized` divides a scorer's scores by a
per-group statistic of themselves: ``'mean'``, ``'max'``, ``'l2'`` (the scores' L2 norm), ``'sum'``, ``'lamp'``
(LAMP, Lee et al., 2021: ``s_j^2 / sum_{k: s_k >= s_j} s_k^2``, so every group's best unit scores 1), or by the
group's size (``'n+m'``, Eq. 2's, and ``'terms'``). Registered combinations: ``l1_mean``, ``l1_max``, ``l1_l2``,
``l2_mean``, ``l2_max``, ``lamp`` (= ``normalized(l2, 'lamp')``), ``taylor_mean``.

The calibration passes that collect activations and Taylor saliencies for such scorers are
:mod:`prunekit.ranking.calibration`.

Composition helpers: :func:`scaled` divides any score by a per-group number, :func:`combine` takes a weighted sum.
A scorer that needs activations says so with ``fn.needs_activations = True``, one that needs gradients with
``fn.needs_gradients = True``; the engine (or :func:`gather_stats`) then runs the calibration pass and hands the
result in ``stats``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import torch
from torch import nn

from ..registry import PrunekitError, Registry

__all__ = [
    "Scorer",
    "ScoreStats",
    "SCORERS",
    "register_scorer",
    "get_scorer",
    "needs_activations",
    "needs_gradients",
    "l1_down",
    "l1_activation",
    "coupled_l1",
    "l2",
    "tina",
    "taylor",
    "random_score",
    "scaled",
    "normalized",
    "combine",
    "NORMALIZERS",
    "SCORE_NORMALIZERS",
    "score_groups",
]


@dataclass
class ScoreStats:
    """What a scorer may use besides the weights.

    Attributes:
        activations: group name -> mean |activation| per unit, filled when a scorer needs activations.
        generator: random source for stochastic scorers (seeded by the engine, so runs repeat).
        saliency: parameter ``id`` -> ``sum over batches |w * dL/dw|`` (same shape as the parameter), filled when a
            scorer needs gradients.
        params: parameter ``id`` -> the parameter, for the entries of ``saliency``.
    """

    activations: Mapping[str, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    saliency: Mapping[int, torch.Tensor] = field(default_factory=dict)
    params: Mapping[int, nn.Parameter] = field(default_factory=dict)


class Scorer(Protocol):
    def __call__(self, group: Any, stats: ScoreStats) -> torch.Tensor: ...


SCORERS: Registry[Scorer] = Registry("scorer", entry_point_group="prunekit.scorers", builtins=(__name__,),
                                    import_paths=True)


def register_scorer(name: str, fn: Scorer | None = None, *, overwrite: bool = False):
    """Register a scorer under ``name`` (usable as a decorator)."""
    return SCORERS.register(name, fn, overwrite=overwrite)


def get_scorer(name_or_fn: str | Scorer) -> Scorer:
    """A registered scorer by name, a ``package.module:function`` path (imported), or the callable itself."""
    return name_or_fn if callable(name_or_fn) else SCORERS.get(name_or_fn)


def needs_activations(scorer: Scorer) -> bool:
    return bool(getattr(scorer, "needs_activations", False))


def needs_gradients(scorer: Scorer) -> bool:
    return bool(getattr(scorer, "needs_gradients", False))


def _inherit(fn: Callable, *scorers: Scorer, name: str | None = None) -> Callable:
    fn.needs_activations = any(needs_activations(s) for s in scorers)
    fn.needs_gradients = any(needs_gradients(s) for s in scorers)
    if name is not None:
        fn.__name__ = name
    return fn


def _device(group: Any) -> torch.device:
    root = getattr(group, "root", None)
    w = getattr(root, "weight", None)
    if isinstance(w, torch.Tensor):
        return w.device
    rows = group.rows()
    return rows[0].device if rows else torch.device("cpu")


def _l1_rows(mats: list[torch.Tensor], n: int, device) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float32, device=device)
    for w in mats:
        out += w.detach().abs().float().sum(dim=1)
    return out


@register_scorer("l1_down")
def l1_down(group: Any, stats: ScoreStats) -> torch.Tensor:
    """Vanilla L1: ``sum_k |W_down[j, k]|`` over the producer rows only (Table 3, "Vanilla L1")."""
    return _l1_rows(group.rows(), group.width, _device(group))


@register_scorer("l1")
def coupled_l1(group: Any, stats: ScoreStats) -> torch.Tensor:
    """I_0: ``sum_k |W_down[j, k]| + sum_k |W_up[k, j]|``, the down row plus the up column, unscaled."""
    return _l1_rows(group.rows() + group.columns(), group.width, _device(group))



@register_scorer("l2")
def l2(group: Any, stats: ScoreStats) -> torch.Tensor:
    """L2 norm of every weight tied to the unit (producer rows and consumer columns)."""
    out = torch.zeros(group.width, dtype=torch.float32, device=_device(group))
    for w in group.rows() + group.columns():
        out += w.detach().float().pow(2).sum(dim=1)
    return out.sqrt()


def _norm_paper(group: Any) -> float:
    return group.width + group.fan


def _norm_terms(group: Any) -> float:
    return sum(w.shape[1] for w in group.rows() + group.columns())


# The paper normalises by n_i + m_i (Eq. 2); the number of weights actually summed is m_i + m_i in an adapter.
NORMALIZERS: dict[str, Callable[[Any], float]] = {"n+m": _norm_paper, "terms": _norm_terms}


def scaled(scorer: Scorer, normalizer: str | Callable[[Any], float] = "n+m") -> Scorer:
    """``scorer`` divided by a per-group normaliser: ``'n+m'`` (Eq. 2), ``'terms'`` or ``fn(group) -> float``.

    Within one group this changes nothing; across groups it makes big and small adapters comparable.
    """
    if isinstance(normalizer, str):
        if normalizer not in NORMALIZERS:
            raise PrunekitError(f"normalizer: unknown {normalizer!r}; allowed: {', '.join(NORMALIZERS)} or a callable")
        norm = NORMALIZERS[normalizer]
    else:
        norm = normalizer

    def scaled_scorer(group: Any, stats: ScoreStats) -> torch.Tensor:
        return scorer(group, stats) / norm(group)

    return _inherit(scaled_scorer, scorer, name=f"scaled_{getattr(scorer, '__name__', 'scorer')}")


def _lamp(s: torch.Tensor, group: Any) -> torch.Tensor:
    sq = s.float().pow(2)
    order = torch.argsort(sq, descending=True, stable=True)
    tail = torch.cumsum(sq[order], 0)  # sum of the squares of every score >= this one
    out = torch.empty_like(sq)
    out[order] = sq[order] / tail.clamp_min(torch.finfo(torch.float32).tiny)
    return out


def _safe(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(torch.finfo(torch.float32).tiny)


# Per-group statistics of the scores themselves: s -> s / stat(s), or a transform (LAMP).
SCORE_NORMALIZERS: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {
    "mean": lambda s, g: s / _safe(s.float().mean()),
    "max": lambda s, g: s / _safe(s.float().abs().max()),
    "l2": lambda s, g: s / _safe(s.float().norm()),
    "sum": lambda s, g: s / _safe(s.float().abs().sum()),
    "lamp": _lamp,
    "n+m": lambda s, g: s / _norm_paper(g),
    "terms": lambda s, g: s / _norm_terms(g),
}


def normalized(scorer: Scorer, how: str | Callable[[torch.Tensor, Any], torch.Tensor] = "mean") -> Scorer:
    """``scorer`` with its scores normalised per group (``'mean'``, ``'max'``, ``'l2'``, ``'sum'``, ``'lamp'``,
    ``'n+m'``, ``'terms'``, or ``fn(scores, group) -> scores``), so that a global ranking compares unlike layers.

    Example: ``normalized(coupled_l1, 'mean')`` ranks each channel by its L1 relative to its layer's mean channel.
    """
    if isinstance(how, str):
        if how not in SCORE_NORMALIZERS:
            raise PrunekitError(f"normalizer: unknown {how!r}; allowed: {', '.join(SCORE_NORMALIZERS)} or a callable")
        fn, label = SCORE_NORMALIZERS[how], how.replace("+", "")
    else:
        fn, label = how, getattr(how, "__name__", "custom")

    def normalized_scorer(group: Any, stats: ScoreStats) -> torch.Tensor:
        return fn(scorer(group, stats), group)

    base = getattr(scorer, "__name__", "scorer")
    normalized_scorer.__doc__ = f"``{base}`` normalised per group ({label})."
    return _inherit(normalized_scorer, scorer, name=f"{base}_{label}")


def combine(*scorers: Scorer, weights: Iterable[float] | None = None) -> Scorer:
    """Weighted sum of scorers (weights default to 1)."""
    weights = list(weights) if weights is not None else [1.0] * len(scorers)
    if len(weights) != len(scorers):
        raise ValueError(f"combine: {len(scorers)} scorers but {len(weights)} weights")

    def combined(group: Any, stats: ScoreStats) -> torch.Tensor:
        return sum(w * s(group, stats) for w, s in zip(weights, scorers))

    return _inherit(combined, *scorers)


@register_scorer("tina")
def tina(group: Any, stats: ScoreStats) -> torch.Tensor:
    """Eq. 2: ``I_j = (sum_k |W_down[j, k]| + sum_k |W_up[k, j]|) / (n_i + m_i)``."""
    return coupled_l1(group, stats) / _norm_paper(group)


@register_scorer("l1_activation")
def l1_activation(group: Any, stats: ScoreStats) -> torch.Tensor:
    """L1(a): mean |activation| of each unit over the calibration batches."""
    if group.name not in stats.activations:
        raise PrunekitError(f"l1_activation: no activations recorded for group {group.name!r}; "
                            "the engine needs calibration batches (calibration=...) for this scorer")
    return stats.activations[group.name].float()


l1_activation.needs_activations = True


@register_scorer("l1_activation_scaled")
def l1_activation_scaled(group: Any, stats: ScoreStats) -> torch.Tensor:
    """L1(a) divided by n_i + m_i (Table 3's global L1(a) rows, "Scaling" ticked)."""
    return l1_activation(group, stats) / _norm_paper(group)


l1_activation_scaled.needs_activations = True


@contextlib.contextmanager
def _weights_as(stats: ScoreStats) -> Iterator[None]:
    """Every parameter with a saliency temporarily reads as its saliency, so a group's own ``rows()`` / ``columns()``
    slice the saliencies exactly as they slice the weights; restored whatever happens."""
    swapped = []
    try:
        for key, sal in stats.saliency.items():
            p = stats.params[key]
            if p.shape == sal.shape:
                swapped.append((p, p.data))
                p.data = sal.to(device=p.device, dtype=p.dtype)
        yield
    finally:
        for p, data in swapped:
            p.data = data


@register_scorer("taylor")
def taylor(group: Any, stats: ScoreStats) -> torch.Tensor:
    """First-order Taylor: ``sum |w * dL/dw|`` over every weight tied to the unit, summed over calibration batches."""
    if not stats.saliency:
        raise PrunekitError("taylor: no gradients recorded; pass calibration= ((inputs, targets) batches) so the "
                            "engine (or prunekit.prune) can compute |w * dL/dw|")
    with _weights_as(stats):
        return _l1_rows(group.rows() + group.columns(), group.width, _device(group))


taylor.needs_gradients = True


@register_scorer("random")
def random_score(group: Any, stats: ScoreStats) -> torch.Tensor:
    """Uniform random scores (a control)."""
    return torch.rand(group.width, generator=stats.generator)


_COMBINATIONS = [
    ("l1_mean", coupled_l1, "mean", "L1 of the unit's weights divided by its group's mean L1."),
    ("l1_max", coupled_l1, "max", "L1 of the unit's weights divided by its group's largest L1."),
    ("l1_l2", coupled_l1, "l2", "L1 of the unit's weights divided by the L2 norm of its group's L1 scores."),
    ("l2_mean", l2, "mean", "L2 norm of the unit's weights divided by its group's mean."),
    ("l2_max", l2, "max", "L2 norm of the unit's weights divided by its group's largest."),
    ("lamp", l2, "lamp", "LAMP (Lee et al., 2021): s_j^2 / sum of s_k^2 over the group's units scoring >= s_j."),
    ("taylor_mean", taylor, "mean", "First-order Taylor score divided by its group's mean."),
]
for _name, _base, _how, _doc in _COMBINATIONS:
    _fn = _inherit(normalized(_base, _how), _base, name=_name)
    _fn.__doc__ = _doc
    register_scorer(_name, _fn)


def score_groups(groups: Iterable[Any], scorer: Scorer, stats: ScoreStats | None = None) -> dict[str, torch.Tensor]:
    """Run ``scorer`` on every group; checks each result is one finite number per unit."""
    stats = stats if stats is not None else ScoreStats()
    out = {}
    for g in groups:
        s = scorer(g, stats)
        if not isinstance(s, torch.Tensor) or s.shape != (g.width,):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise PrunekitError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned {shape} for group "
                                f"{g.name!r}; expected a tensor of shape ({g.width},), one score per unit")
        if not torch.isfinite(s).all():
            raise PrunekitError(f"scorer {getattr(scorer, '__name__', scorer)!r} returned non-finite scores for "
                                f"group {g.name!r}")
        out[g.name] = s.detach().float().cpu()
    return out
