"""The group protocol: what the core knows of a group, and torch-pruning's group as prunekit uses it.

The group protocol
------------------
The core (scopes, plans, budgets, the engine, the scorers) never checks a group's class; any object with these
attributes is a group, so other modules add kinds of their own (``prunekit.adapters.groups``: adapters;
``prunekit.groups.heads``: attention heads, where one unit is a whole head)::

    name: str            unique in the model and stable when the same architecture is rebuilt (plans key on it)
    kind: str            'adapter', 'channel', 'neuron', 'head', ...
    width: int           n, the number of units now
    fan: int             m, weights per unit in the producers (Eq. 2 normalises by n + m)
    policy               min_width, round_to, max_ratio, on_empty, check_forward (see prunekit.core.policy)
    rows() -> [Tensor(n, k)]     producer weights, row j computes unit j
    columns() -> [Tensor(n, k)]  consumer weights, row j reads unit j
    prune(idxs) -> None          remove these units (indices in 0..n-1) physically
    unit_params() -> int         parameters one unit holds now (first-order cost, for params / MACs budgets)

Optional: ``param_slices() -> [ParamSlice] | None`` (exactly which tensor dims a unit owns, so budgets count cross
terms between groups exactly; None when units differ), ``activation`` (the module whose output carries the units,
for activation scorers), ``channel_groups`` (channels per unit), ``modules`` (what ``prune`` touches: budgets derive
the slices of a group without ``param_slices`` by pruning a shape-only copy of them) and ``root`` (for the device).

:class:`Group` is the group of one root layer found in torch-pruning's graph; :class:`Member` one layer of it with
its role, :class:`ParamSlice` a tensor dimension a unit owns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, NamedTuple, Protocol, Sequence, runtime_checkable

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from .policy import CHANNEL_POLICY, Policy
from ..registry import PrunekitError
from .tpcompat import subgroup

__all__ = ["GroupLike", "Group", "Member", "ParamSlice", "UnsupportedModelError", "UnsupportedLayerError",
           "ACTIVATION_TYPES", "DEFAULT_ROOT_TYPES", "groups_by_name"]


ACTIVATION_TYPES = (nn.GELU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.Mish)
DEFAULT_ROOT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
GroupsFn = Callable[[nn.Module, Any], list]


class UnsupportedModelError(PrunekitError, ValueError):
    """A model (or part of it) prunekit cannot prune safely; raised before the model is modified (or after it was
    restored)."""


class UnsupportedLayerError(PrunekitError, ValueError):
    """A layer in a group that torch-pruning's pruning functions cannot slice."""


@runtime_checkable
class GroupLike(Protocol):
    """The duck-typed group the core relies on (module docstring); ``isinstance(g, GroupLike)`` checks the names."""

    name: str
    kind: str
    policy: Any

    @property
    def width(self) -> int: ...

    @property
    def fan(self) -> int: ...

    def rows(self) -> list[torch.Tensor]: ...

    def columns(self) -> list[torch.Tensor]: ...

    def prune(self, idxs: Sequence[int]) -> None: ...

    def unit_params(self) -> int: ...


class ParamSlice(NamedTuple):
    """One unit of a group owns ``size`` entries along ``dim`` of tensor ``owner.<attr>`` (resolved live, because
    pruning replaces parameters by smaller ones)."""

    owner: nn.Module
    attr: str
    dim: int
    size: float

    def tensor(self) -> torch.Tensor | None:
        return getattr(self.owner, self.attr, None)


def channel_dims(module: nn.Module) -> tuple[int, int]:
    """``(output-channel dim, input-channel dim)`` of ``module.weight``: (0, 1) for Linear and Conv; (1, 0) where the
    weight is stored the other way round: ``ConvTranspose`` ``(in, out / groups, k...)``, ``nn.Embedding``
    ``(num_embeddings, dim)``, transformers' ``Conv1D`` ``(in, out)``."""
    if isinstance(module, nn.Embedding) or getattr(module, "transposed", False) is True:
        return 1, 0
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):
        return 1, 0
    return 0, 1


@dataclass(eq=False)
class Member:
    """One layer of a group: which of its channels (``idxs``) carry which of the group's channels (``root_idxs``)."""

    name: str
    module: nn.Module
    role: Literal["producer", "consumer", "other"]
    idxs: list[int]
    root_idxs: list[int]

    def channel_weights(self, width: int, channel_groups: int = 1) -> torch.Tensor:
        """This layer's weights per unit: a ``(width, k)`` view with row j = every weight tied to unit j.

        Producers give their output rows (conv kernels flattened), consumers their input columns; when one channel maps
        to several input channels (a conv feeding a Linear through ``flatten``), those columns are concatenated; with
        ``channel_groups`` G, unit j gathers root channels ``j, j + width, ...``.
        """
        if isinstance(self.module, nn.RNNBase):
            return self._by_unit(self._recurrent_weights(), width, channel_groups)
        w = self.module.weight
        out_dim, in_dim = channel_dims(self.module)
        dim = out_dim if self.role == "producer" else in_dim
        if self.role == "other" or w.dim() < 2:
            dim = 0
        groups = getattr(self.module, "groups", 1)
        grouped_input = dim == 1 and (out_dim, in_dim) == (0, 1) and isinstance(self.module, ops.TORCH_CONV) \
            and groups > 1
        if not grouped_input and len(self.idxs) == w.shape[dim] and self.idxs == self.root_idxs \
                and self.idxs == list(range(len(self.idxs))):
            per_channel = w.movedim(dim, 0).reshape(len(self.idxs), -1)  # every channel, in order: a view
            return self._by_unit(per_channel, width, channel_groups)
        idx = torch.as_tensor(self.idxs, device=w.device)
        root = torch.as_tensor(self.root_idxs, device=w.device)
        order = torch.argsort(root, stable=True)
        if grouped_input:
            # a grouped conv reads input channel c with the out channels of conv group c // cpg, at column c % cpg
            # (groups * opg, cpg, ...) -> row c = g * cpg + j: the opg kernels of group g at column j
            cpg, opg = w.shape[1], w.shape[0] // groups
            by_input = w.reshape(groups, opg, cpg, -1).transpose(1, 2).reshape(groups * cpg, -1)
            per_channel = by_input.index_select(0, idx[order])
        else:
            per_channel = w.index_select(dim, idx[order]).movedim(dim, 0).reshape(len(self.idxs), -1)
        channels = width * channel_groups
        counts = torch.bincount(root, minlength=channels) if len(self.root_idxs) else root.new_zeros(channels)
        if counts.numel() != channels or not bool((counts == counts[0]).all()) or not int(counts[0]):
            # partial or uneven coverage (a layer behind a concatenation carries some of the root's channels):
            # row r gathers the rows mapped to root channel r in order, zero-padded; uncovered channels stay zero
            roots = root[order]
            rank = torch.arange(len(roots), device=w.device) - torch.searchsorted(roots, roots)  # k-th row of its root
            out = per_channel.new_zeros(channels, int(torch.bincount(roots).max()), per_channel.shape[1])
            keep = roots < channels
            out[roots[keep], rank[keep]] = per_channel[keep]
            per_channel = out.reshape(channels, -1)
        return self._by_unit(per_channel, width, channel_groups)

    def _recurrent_weights(self) -> torch.Tensor:
        """A recurrent layer's weights per hidden unit: as a producer, rows ``g * H + j`` of every gate g of every
        weight and bias (every layer); as a consumer, the input columns of its first layer."""
        m = self.module
        idx = torch.as_tensor(self.idxs)[torch.argsort(torch.as_tensor(self.root_idxs), stable=True)]
        if self.role != "producer":
            return m.weight_ih_l0.index_select(1, idx.to(m.weight_ih_l0.device)).t()
        parts = []
        for name in m._flat_weights_names:
            w = getattr(m, name, None)
            if w is None:
                continue
            gates = w.shape[0] // m.hidden_size
            view = w.reshape(gates, m.hidden_size, -1).index_select(1, idx.to(w.device))  # (G, n, cols)
            parts.append(view.transpose(0, 1).reshape(len(idx), -1))
        return torch.cat(parts, 1)

    @staticmethod
    def _by_unit(per_channel: torch.Tensor, width: int, channel_groups: int) -> torch.Tensor:
        per_channel = per_channel.reshape(width * channel_groups, -1)
        if channel_groups > 1:
            per_channel = per_channel.reshape(channel_groups, width, -1).transpose(0, 1)
        return per_channel.reshape(width, -1)


@dataclass(eq=False)
class Group:
    """Coupled channels of a model, named after their root producer (e.g. ``blocks.0.attn.adapter.down``).

    Attributes:
        name: qualified name of the root producer.
        members: every parameterised layer touched when the group is pruned.
        activation: module whose output carries the units (the adapter's phi), for activation-based scores.
        kind: ``'channel'`` (conv root), ``'neuron'`` (Linear root), ``'adapter'`` ... (set by whoever finds it).
        policy: what the group may lose (:class:`~prunekit.core.policy.Policy`).
        channel_groups: channels per unit (G of a grouped conv / GroupNorm in the chain; 1 otherwise).
        slices: the tensor dims one unit owns (:class:`ParamSlice`), every tensor torch-pruning slices included;
            averaged over the units when they differ.
        exact: whether every unit owns the same slices (false behind a concatenation that carries part of the
            group's channels in one layer and part in another, as in GhostNet); budgets then count, not model.
    """

    name: str
    members: list[Member]
    activation: nn.Module | None = None
    kind: str = "channel"
    policy: Policy = CHANNEL_POLICY
    channel_groups: int = 1
    slices: list[ParamSlice] = field(default_factory=list, repr=False)
    exact: bool = True
    _dg: tp.DependencyGraph | None = field(default=None, repr=False)
    _handler: Callable | None = field(default=None, repr=False)
    _every: Any = field(default=None, repr=False)  # torch-pruning's group of all channels, while it stays valid
    # the concatenations, splits, reshapes ... the group passes, whose index mappings follow the channel counts: what
    # pruning it recomputes (None: not known, every mapping of the graph)
    _remapped: tuple | None = field(default=None, repr=False)

    @property
    def root(self) -> nn.Module:
        return self.members[0].module

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "producer"]

    @property
    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == "consumer"]

    @property
    def width(self) -> int:
        """n: number of units (hidden units / channels, or channel groups' worth of them) in the group."""
        return len(self.members[0].idxs) // self.channel_groups

    @property
    def fan(self) -> int:
        """m: number of weights in one unit's rows of the root producer (its fan-in; the adapter's input width)."""
        if isinstance(self.root, nn.RNNBase):
            return self.members[0].channel_weights(self.width).shape[1]
        w = self.root.weight.movedim(channel_dims(self.root)[0], 0)
        row = w[0].numel() if w.shape[0] else w.shape[1]
        return row * self.channel_groups

    @property
    def modules(self) -> list[nn.Module]:
        return [m.module for m in self.members]

    def rows(self) -> list[torch.Tensor]:
        """``(n, k)`` weight views of the producers: row j holds the weights that compute unit j."""
        return [m.channel_weights(self.width, self.channel_groups) for m in self.producers]

    def columns(self) -> list[torch.Tensor]:
        """``(n, k)`` weight views of the consumers: row j holds the weights that read unit j."""
        return [m.channel_weights(self.width, self.channel_groups) for m in self.consumers]

    def param_slices(self) -> list[ParamSlice] | None:
        """The tensor dims one unit owns, or None when units differ (see ``exact``)."""
        return list(self.slices) if self.exact else None

    def unit_params(self) -> int:
        """Parameters one unit holds now: every slice of every tensor the group prunes (first order)."""
        total = 0.0
        for s in self.slices:
            t = s.tensor()
            if isinstance(t, nn.Parameter) and t.shape[s.dim]:
                total += t.numel() / t.shape[s.dim] * s.size
        return round(total)

    def channels(self, idxs: Sequence[int]) -> list[int]:
        """Root channel indices of units ``idxs``."""
        n = self.width
        return sorted(g * n + j for g in range(self.channel_groups) for j in idxs)

    def prune(self, idxs: Sequence[int]) -> None:
        """Physically remove units ``idxs`` (indices in ``0..width-1``) from every member; all of them is allowed.

        Parameters are replaced by smaller ones (so an optimizer must be rebuilt); ``requires_grad`` is kept.
        """
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            return
        if idxs[0] < 0 or idxs[-1] >= self.width:
            raise IndexError(f"group {self.name}: unit indices must lie in [0, {self.width}), got {idxs}")
        if self._dg is None:
            raise PrunekitError(f"group {self.name} was not built from a dependency graph and cannot be pruned")
        owners = self.modules + [s.owner for s in self.slices]
        flags = {(id(m), n): p.requires_grad for m in owners for n, p in m.named_parameters(recurse=False)}
        channels = self.channels(idxs)
        every, self._every = self._every, None  # after this prune (or a failed one) it no longer describes the model
        tp_group = subgroup(every, channels) if every is not None else None
        if tp_group is None:
            from .walk import pruning_group  # walk.py names this module's UnsupportedModelError

            update = True if self._remapped is None else self._remapped
            tp_group = pruning_group(self._dg, self.root, self._handler, channels, update=update)
        tp_group.prune(record_history=False)
        for m in owners:
            for n, p in m.named_parameters(recurse=False):
                p.requires_grad_(flags.get((id(m), n), p.requires_grad))

    def __repr__(self) -> str:
        parts = ", ".join(f"{m.name}:{m.role}" for m in self.members)
        return f"Group({self.name!r}, kind={self.kind}, n={self.width}, m={self.fan}, [{parts}])"


def groups_by_name(groups: Iterable[Any]) -> dict[str, Any]:
    return {g.name: g for g in groups}
