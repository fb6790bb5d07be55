"""Budgets: what "done" means, measured on the model, and selections that meet them.

A :class:`Budget` is a kind and a value:

======== ===================================================== ==============================================
kind     value                                                 measured as
======== ===================================================== ==============================================
sigma    the compression to reach, sum m / sum n (TINA)        units kept in the groups (adapters' neurons)
params   fraction of the *whole model's* parameters to remove  ``count_parameters(model)``
macs     fraction of the whole model's MACs to remove          ``tp.utils.count_ops_and_params`` on the example
channels fraction of the prunable units to remove              units (channels, neurons, heads) in the groups
latency  fraction of the model's measured forward time to remove  :class:`~prunekit.budget.latency.LatencyMeter`
======== ===================================================== ==============================================

``Budget.params(0.5)`` means half the parameters of the model gone, classifier and every layer no group touches
included; a ratio the groups cannot reach given their min widths is refused, naming the most they can reach.

Units cost different amounts (a ResNet layer4 channel holds far more parameters than a layer1 channel), and the cost
of a unit depends on what else goes: a conv's weight is ``out x in x k x k``, so removing an output channel (one
group) and an input channel (another group) together saves one weight less than the two apart. :class:`CostModel`
keeps, for every tensor a group slices, its shape and how many entries per dim each unit takes, and computes the
exact number removed by any selection (``prod(shape) - prod(shape - removed)`` per tensor). A params / MACs budget is
met by asking the scope for ``K`` units and searching ``K`` (bisection, :mod:`prunekit.budget.unitsearch`) until the
exact cost is closest to the target, so the reached value is within one unit's cost of it. MACs are modelled the same
way, each parameter weighted by the MACs per parameter torch-pruning counts for its layer (positions for a conv);
what the model misses (MACs of activations and pooling, attention products) is corrected by counting the pruned model
and selecting again (:func:`select_macs`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .opcount import OpCounter
from ..core.policy import UnreachableTargetError, policy_of
from ..registry import PrunekitError
from ..ranking.scopes import Limit
from ..core.undo import output_shapes

__all__ = ["Budget", "BUDGET_KINDS", "CostModel", "slices_of", "count_macs", "count_parameters", "mac_weights",
           "count_forward", "forward_count", "ForwardCount", "unit_limits", "check_reachable"]

BUDGET_KINDS = ("sigma", "params", "macs", "channels", "latency")


@dataclass(frozen=True)
class Budget:
    """What a pruning run must reach.

    Attributes:
        kind: ``'sigma'``, ``'params'``, ``'macs'``, ``'channels'`` or ``'latency'`` (module docstring).
        value: sigma_target for ``'sigma'`` (> 0); otherwise the fraction of the model's measure to remove, in (0, 1).
        meter: for ``'latency'``, how it is measured (:class:`~prunekit.budget.latency.LatencyMeter`: batch size,
            threads, clock); default the example's batch and this process's threads.
    """

    kind: str = "sigma"
    value: float = 512.0
    meter: Any = field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in BUDGET_KINDS:
            raise PrunekitError(f"budget.kind: unknown {self.kind!r}; allowed: {', '.join(BUDGET_KINDS)}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or math.isnan(self.value):
            raise PrunekitError(f"budget.value: expected a number, got {self.value!r}")
        if self.kind == "sigma" and not self.value > 0:
            raise PrunekitError(f"sigma_target: expected a compression rate > 0, got {self.value}")
        if self.kind == "latency" and self.meter is None:
            from .meter import LatencyMeter

            object.__setattr__(self, "meter", LatencyMeter())
        if self.kind != "sigma" and not 0.0 < self.value < 1.0:
            raise PrunekitError(f"ratio: expected the fraction of the model's {self.kind} to remove, in (0, 1), got "
                                f"{self.value} (ratio=0.5 removes half)")

    @classmethod
    def sigma(cls, sigma_target: float) -> "Budget":
        return cls("sigma", sigma_target)

    @classmethod
    def params(cls, ratio: float) -> "Budget":
        return cls("params", ratio)

    @classmethod
    def macs(cls, ratio: float) -> "Budget":
        return cls("macs", ratio)

    @classmethod
    def channels(cls, ratio: float) -> "Budget":
        return cls("channels", ratio)

    @classmethod
    def latency(cls, ratio: float, meter: Any = None, **settings: Any) -> "Budget":
        """Remove ``ratio`` of the measured forward time; ``meter`` or its settings (``batch_size=32, threads=1``,
        ``timer=``) say how it is measured (:class:`~prunekit.budget.latency.LatencyMeter`)."""
        from .meter import LatencyMeter

        if meter is not None and settings:
            raise PrunekitError(f"Budget.latency: pass meter= or its settings ({', '.join(settings)}), not both")
        return cls("latency", ratio, meter if meter is not None else LatencyMeter(**settings))

    @property
    def counts_units(self) -> bool:
        """Whether the budget counts units (sigma, channels) rather than a cost (params, MACs)."""
        return self.kind in ("sigma", "channels")

    def __str__(self) -> str:
        return f"sigma_target={self.value:g}" if self.kind == "sigma" else f"{self.kind} ratio={self.value:g}"


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Scalar parameters of ``model`` (shared ones once), or only those that require grad."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in unique.values())


def _count_ops(model: nn.Module, example_inputs: Any,
               forward_fn: Callable | None = None) -> tuple[float, dict[nn.Module, float], list[tuple[int, ...]]]:
    """torch-pruning's op counter (its per-layer formulas, :class:`~prunekit.budget.opcount.OpCounter`) on one forward
    of ``model`` in eval mode without grad: the MACs, every counted module's MACs and the shapes of the tensors the
    forward returned. The model is left as it was (mode, hooks, attributes)."""
    with OpCounter(model) as ops:
        shapes = output_shapes(model, example_inputs, forward_fn)
    return ops.macs, ops.layer_macs, shapes


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward on ``example_inputs``, counted by torch-pruning (on a copy; the model is not touched)."""
    return int(_count_ops(model, example_inputs)[0])


@dataclass
class ForwardCount:
    """One counted forward: MACs, MACs per parameter (by ``id``, see :func:`mac_weights`), output shapes."""

    macs: int
    weights: dict[int, float]
    output_shapes: list[tuple[int, ...]]


def count_forward(model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> ForwardCount:
    """MACs, MACs per parameter and output shapes from a single counted forward (a prune needs all three, before and
    after slicing: one forward each time instead of three)."""
    return forward_count(model, *_count_ops(model, example_inputs, forward_fn))


def forward_count(model: nn.Module, macs: float, layer_macs: Mapping[nn.Module, float],
                  output_shapes: list[tuple[int, ...]]) -> ForwardCount:
    """A :class:`ForwardCount` from an :class:`~prunekit.budget.opcount.OpCounter`'s results (``layer_macs``: counted
    modules only): every parameter of a counted module gets ``module MACs / module parameters``; parameters outside
    counted modules get 0."""
    weights: dict[int, float] = {}

    def visit(m: nn.Module) -> None:
        if m in layer_macs:
            params = list(m.parameters())
            n = sum(p.numel() for p in params)
            w = (layer_macs.get(m) or 0) / n if n else 0.0
            for p in params:
                weights.setdefault(id(p), w)
            return
        for c in m.children():
            visit(c)

    visit(model)
    return ForwardCount(int(macs), weights, output_shapes)


def mac_weights(model: nn.Module, example_inputs: Any) -> tuple[int, dict[int, float]]:
    """Total MACs, and MACs per parameter for every parameter (by ``id``): torch-pruning counts a supported layer
    (conv, linear, norm, timm attention) as a whole, so each of its parameters gets ``layer MACs / layer params``
    (the number of positions for a conv); parameters outside counted layers get 0."""
    count = count_forward(model, example_inputs)
    return count.macs, count.weights


def slices_of(group: Any) -> list | None:
    """The tensor dims one unit of ``group`` owns: its ``param_slices()``, or, for a group that only says which
    ``modules`` its ``prune`` touches (attention heads), found by pruning unit 0 of a copy of the group whose modules
    live on the meta device (shapes only); None when neither works."""
    fn = getattr(group, "param_slices", None)
    if callable(fn):
        return fn()
    modules = list(getattr(group, "modules", None) or [])
    if not modules or not getattr(group, "width", 0):
        return None
    from ..core.group import ParamSlice
    from ..core.slices import meta_clone

    tops = [m for m in modules if not any(m is not o and any(m is d for d in o.modules()) for o in modules)]
    memo: dict[int, Any] = {}
    originals: dict[int, tuple[nn.Module, dict[str, tuple[int, ...]]]] = {}
    for top in tops:
        clone = meta_clone(top)
        pairs = zip(top.named_modules(remove_duplicate=False), clone.named_modules(remove_duplicate=False))
        for (_, a), (_, b) in pairs:
            memo[id(a)] = b
            originals[id(b)] = (a, {n: tuple(p.shape) for n, p in a.named_parameters(recurse=False)})
        for a, b in zip(top.parameters(), clone.parameters()):
            memo[id(a)] = b
        for a, b in zip(top.buffers(), clone.buffers()):
            memo[id(a)] = b
    try:
        twin = copy.deepcopy(group, memo)
        with torch.no_grad():
            twin.prune([0])
    except Exception:  # noqa: BLE001 - a group that cannot be copied or pruned on meta tensors: no slices
        return None
    out = []
    for orig, shapes in originals.values():
        clone = memo[id(orig)]
        for name, shape in shapes.items():
            new = getattr(clone, name, None)
            if not isinstance(new, torch.Tensor) or tuple(new.shape) == shape or len(new.shape) != len(shape):
                continue
            out.extend(ParamSlice(orig, name, d, float(a - b)) for d, (a, b) in enumerate(zip(shape, new.shape))
                       if a != b)
    return out


class CostModel:
    """Exact parameters (or modelled MACs) removed by taking ``r_g`` units from each group g.

    Built from the groups' slices (:func:`slices_of`); a group without any counts ``unit_params()`` per unit,
    independently.
    ``weights`` maps a tensor's ``id`` to a per-entry weight (MACs per parameter); by default every entry counts 1.
    """

    def __init__(self, groups: Iterable[Any], weights: Mapping[int, float] | None = None, default_weight: float = 1.0):
        self._tensors: dict[int, tuple[tuple[int, ...], float]] = {}
        self._slices: dict[str, list[tuple[int, int, float]]] = {}
        self._flat: dict[str, float] = {}
        for g in groups:
            slices = slices_of(g)
            if slices is None:
                self._flat[g.name] = float(g.unit_params()) * default_weight
                continue
            entries = []
            for s in slices:
                t = s.tensor()
                if not isinstance(t, torch.Tensor):
                    continue
                key = id(t)
                w = default_weight if weights is None else weights.get(key, 0.0)
                self._tensors.setdefault(key, (tuple(t.shape), w))
                entries.append((key, s.dim, float(s.size)))
            self._slices[g.name] = entries

    def removed(self, counts: Mapping[str, int]) -> float:
        """What removing ``counts[g]`` units of every group g takes away (cross terms included)."""
        cut: dict[int, dict[int, float]] = {}
        total = 0.0
        for name, r in counts.items():
            if not r:
                continue
            total += self._flat.get(name, 0.0) * r
            for key, dim, size in self._slices.get(name, ()):
                d = cut.setdefault(key, {})
                d[dim] = d.get(dim, 0.0) + r * size
        for key, dims in cut.items():
            shape, w = self._tensors[key]
            after = 1.0
            for i, n in enumerate(shape):
                after *= max(0.0, n - dims.get(i, 0.0))
            total += w * (math.prod(shape) - after)
        return total

    def unit_cost(self, name: str) -> float:
        """What one unit of group ``name`` costs now (nothing else removed)."""
        return self.removed({name: 1})

    def max_unit_cost(self, names: Iterable[str]) -> float:
        return max((self.unit_cost(n) for n in names), default=0.0)


def unit_limits(groups: Iterable[Any], original: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per group, the scope :class:`~prunekit.ranking.scopes.Limit`: lowest width from its policy (``max_ratio``
    relative to ``original[name]``, default the current width) and its ``round_to``."""
    out = {}
    for g in groups:
        min_width, round_to, max_ratio, _ = policy_of(g)
        orig = (original or {}).get(g.name, g.width)
        floor = max(min_width, math.ceil(orig * (1.0 - max_ratio) - 1e-9))
        floor = -(-floor // round_to) * round_to
        out[g.name] = Limit(min(g.width, floor), round_to)
    return out


def check_reachable(budget: Budget, removable: float, total: float) -> None:
    """Refuse a ratio the groups cannot reach (``removable`` of ``total`` at most), naming the most they can."""
    if budget.kind == "sigma" or total <= 0:
        return
    best = removable / total
    if budget.value > best + 1e-12:
        raise UnreachableTargetError(
            f"ratio: {budget.value:g} of the model's {budget.kind} cannot be removed; with every prunable group at "
            f"its lowest width (min_width, round_to, max_ratio) at most {best:.4f} can go (the rest is in layers no "
            f"group prunes: the classifier, ignored layers, the input and output channels)")
