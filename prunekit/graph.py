"""Coupled neuron groups in any model, discovered with torch-pruning's ``DependencyGraph``.

A group is a set of channels that must be removed together to keep the model well formed::

    group := {producers: layers whose *output* channels are the neurons,
              consumers: layers whose *input* channels are the neurons,
              others:    per-channel parameters in between (BatchNorm, LayerNorm)}

Examples (n = width, m = fan-in of one producer row):

- an adapter: producers ``[down]`` (rows of W_down, n x m), consumers ``[up]`` (columns of W_up, m x n);
- a transformer MLP: producers ``[fc1]``, consumers ``[fc2]``;
- ``Conv2d(3, 8) -> BN(8) -> ReLU -> Conv2d(8, 16)``: producers ``[conv1]``, others ``[bn]``, consumers ``[conv2]``.

torch-pruning finds the coupling (including index maps through flatten / concat); prunekit keeps the ranking and the
selection, and prunes a group by explicit indices with ``DG.get_pruning_group(root, fn, idxs).prune()``, which,
unlike torch-pruning's ``MetaPruner``, may remove every channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .adapters import find_adapters
from .registry import PrunekitError

__all__ = ["Member", "Group", "find_groups", "adapter_groups", "groups_by_name"]

ACTIVATION_TYPES = (nn.GELU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.Mish)
DEFAULT_ROOT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(eq=False)
class Member:
    """One layer of a group: which of its channels (``idxs``) carry which of the group's neurons (``root_idxs``)."""

    name: str
    module: nn.Module
    role: Literal["producer", "consumer", "other"]
    idxs: list[int]
    root_idxs: list[int]

    def channel_weights(self, width: int) -> torch.Tensor:
        """This layer's weights per neuron: a ``(width, k)`` view with row j = every weight tied to neuron j.

        Producers give their output rows (conv kernels flattened), consumers their input columns; when one neuron maps
        to several input channels (a conv feeding a Linear through ``flatten``), those columns are concatenated.
        """
        w = self.module.weight
        dim = 0 if self.role == "producer" else 1
        if self.role == "other" or w.dim() < 2:
            dim = 0
        idx = torch.as_tensor(self.idxs, device=w.device)
        root = torch.as_tensor(self.root_idxs, device=w.device)
        order = torch.argsort(root, stable=True)
        per_channel = w.index_select(dim, idx[order]).movedim(dim, 0).reshape(len(self.idxs), -1)
        return per_channel.reshape(width, -1)


@dataclass(eq=False)
class Group:
    """Coupled channels of a model, named after their root producer (e.g. ``blocks.0.attn.adapter.down``).

    Attributes:
        name: qualified name of the root producer.
        members: every parameterised layer touched when the group is pruned.
        activation: module whose output carries the neurons (the adapter's phi), for activation-based scores.
    """

    name: str
    members: list[Member]
    activation: nn.Module | None = None
    _dg: tp.DependencyGraph | None = field(default=None, repr=False)
    _handler: Callable | None = field(default=None, repr=False)

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
        """n: number of neurons (hidden units / channels) in the group."""
        return len(self.members[0].idxs)

    @property
    def fan(self) -> int:
        """m: number of weights in one row of the root producer (its fan-in; the adapter's input width)."""
        return self.root.weight[0].numel() if self.width else self.root.weight.shape[1]

    @property
    def modules(self) -> list[nn.Module]:
        return [m.module for m in self.members]

    def rows(self) -> list[torch.Tensor]:
        """``(n, k)`` weight views of the producers: row j holds the weights that compute neuron j."""
        return [m.channel_weights(self.width) for m in self.producers]

    def columns(self) -> list[torch.Tensor]:
        """``(n, k)`` weight views of the consumers: row j holds the weights that read neuron j."""
        return [m.channel_weights(self.width) for m in self.consumers]

    def prune(self, idxs: Sequence[int]) -> None:
        """Physically remove neurons ``idxs`` (indices in ``0..width-1``) from every member; all of them is allowed.

        Parameters are replaced by smaller ones (so an optimizer must be rebuilt); ``requires_grad`` is kept.
        """
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            return
        if idxs[0] < 0 or idxs[-1] >= self.width:
            raise IndexError(f"group {self.name}: neuron indices must lie in [0, {self.width}), got {idxs}")
        if self._dg is None:
            raise PrunekitError(f"group {self.name} was not built from a dependency graph and cannot be pruned")
        flags = {(id(m), n): p.requires_grad for m in self.modules for n, p in m.named_parameters(recurse=False)}
        self._dg.get_pruning_group(self.root, self._handler, idxs).prune(record_history=False)
        for m in self.modules:
            for n, p in m.named_parameters(recurse=False):
                p.requires_grad_(flags.get((id(m), n), p.requires_grad))

    def __repr__(self) -> str:
        parts = ", ".join(f"{m.name}:{m.role}" for m in self.members)
        return f"Group({self.name!r}, n={self.width}, m={self.fan}, [{parts}])"


def _has_matrix_weight(module: object) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(module, nn.Module) and isinstance(w, torch.Tensor) and w.dim() >= 2


def _activation_after(parent: nn.Module, chain: list[nn.Module]) -> nn.Module | None:
    """The activation applied to a group's neurons: the parent's ``act`` (adapters, timm ``Mlp``), else the sibling
    registered right after the last layer of the chain when it is an activation (``conv, bn, relu`` in a Sequential
    or a ResNet block), else None (activation scores then read the producer's output)."""
    act = getattr(parent, "act", None)
    if isinstance(act, nn.Module) and not _has_matrix_weight(act):
        return act
    children = list(parent.children())
    positions = [i for i, c in enumerate(children) if any(c is m for m in chain)]
    if positions and positions[-1] + 1 < len(children) and isinstance(children[positions[-1] + 1], ACTIVATION_TYPES):
        return children[positions[-1] + 1]
    return None


def _build_group(dg: tp.DependencyGraph, root: nn.Module, names: dict[nn.Module, str]) -> Group:
    pruner = dg.get_pruner_of_module(root)
    handler = pruner.prune_out_channels
    n = pruner.get_out_channels(root)
    tp_group = dg.get_pruning_group(root, handler, list(range(n)))
    members: list[Member] = []
    seen = set()
    for item in tp_group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names or not any(True for _ in module.parameters(False)):
            continue  # element-wise ops, reshapes, concat nodes: nothing to prune or score
        if _has_matrix_weight(module):
            role = "producer" if dg.is_out_channel_pruning_fn(item.dep.handler) else "consumer"
        else:
            role = "other"
        key = (id(module), role)
        if key in seen:
            continue
        seen.add(key)
        members.append(Member(names[module], module, role, list(item.idxs), list(item.root_idxs)))
    parent_name = names[root].rpartition(".")[0]
    parent = dg.model.get_submodule(parent_name) if parent_name else dg.model
    chain = [root] + [m.module for m in members if m.role == "other" and names[m.module].startswith(parent_name)]
    return Group(names[root], members, _activation_after(parent, chain), dg, handler)


def find_groups(
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence | dict,
        *,
        only: Iterable[nn.Module] | Callable[[str], bool] | None = None,
        root_types: Sequence[type] = DEFAULT_ROOT_TYPES,
        forward_fn: Callable | None = None,
) -> list[Group]:
    """All coupled groups of ``model``, traced on ``example_inputs``.

    Args:
        model: any ``nn.Module`` torch-pruning can trace.
        example_inputs: a batch the model accepts (one image is enough).
        only: restrict to groups lying entirely inside these modules (or whose members' names satisfy this
            predicate); e.g. the adapters, so the frozen backbone is never touched.
        root_types: layer types that can root a group (their output channels are the neurons).
        forward_fn: ``forward_fn(model, example_inputs)`` for models that need more than ``model(example_inputs)``.

    Returns:
        Groups in model order; each has at least one producer. A residual stream shared by many layers is one group.
    """
    # torch-pruning traces autograd: frozen parameters would leave no graph, so every parameter requires grad
    # while tracing; the flags and the train/eval mode are restored afterwards.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs, forward_fn=forward_fn, verbose=False)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}

    if only is None:
        inside = lambda name: True  # noqa: E731
    elif callable(only):
        inside = only
    else:
        allowed = {names[sub] for mod in only for sub in mod.modules() if sub in names}
        inside = allowed.__contains__

    groups, visited = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, tuple(root_types)) or module in visited or module not in dg.module2node:
            continue
        if not inside(name):
            continue
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        group = _build_group(dg, module, names)
        for m in group.producers:
            visited.add(m.module)
        if all(inside(m.name) for m in group.members):
            groups.append(group)
    return groups


def adapter_groups(model: nn.Module, example_inputs, forward_fn: Callable | None = None) -> list[Group]:
    """The ``down.out <-> up.in`` group of every adapter in ``model`` (one per adapter, never the backbone)."""
    adapters = list(find_adapters(model).values())
    if not adapters:
        return []
    return find_groups(model, example_inputs, only=adapters, forward_fn=forward_fn)


def groups_by_name(groups: Iterable[Group]) -> dict[str, Group]:
    return {g.name: g for g in groups}
