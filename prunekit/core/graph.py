"""Coupled groups of units in any model, discovered with torch-pruning's ``DependencyGraph``.

A group is a set of channels that must be removed together to keep the model well formed::

    group := {producers: layers whose *output* channels are the units,
              consumers: layers whose *input* channels are the units,
              others:    per-channel parameters in between (BatchNorm, LayerNorm, stray nn.Parameters)}

Examples (n = width, m = fan-in of one producer row):

- an adapter: producers ``[down]`` (rows of W_down, n x m), consumers ``[up]`` (columns of W_up, m x n);
- a transformer MLP: producers ``[fc1]``, consumers ``[fc2]``;
- ``Conv2d(3, 8) -> BN(8) -> ReLU -> Conv2d(8, 16)``: producers ``[conv1]``, others ``[bn]``, consumers ``[conv2]``;
- a grouped conv (``groups=G``) or GroupNorm in the chain: one *unit* is G channels, channel ``j`` of every one of the
  G channel groups (``j, j + n, j + 2n, ...``), so every conv group keeps the same width; ``width = channels / G``.

torch-pruning traces the model and maps channel indices through flatten / concat / split / reshape; prunekit walks the
traced graph itself (:mod:`prunekit.core.walk`: the walk always ends, within a budget), keeps the ranking and the
selection, and prunes a group by explicit indices through torch-pruning's pruning functions, which, unlike
torch-pruning's ``MetaPruner``, may remove every channel.

The group protocol is :mod:`prunekit.core.group`; what prunekit changes or adds to torch-pruning (pruners it lacks,
one index mapping per search, cutting a found group instead of walking the graph again) is
:mod:`prunekit.core.tpcompat`.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from .policy import CHANNEL_POLICY, Policy
from ..registry import PrunekitError

from .group import (ACTIVATION_TYPES, DEFAULT_ROOT_TYPES, Group, Member, ParamSlice, UnsupportedLayerError)
from .tpcompat import default_customized_pruners, frozen_index_mapping, static_mapping
from .outputs import output_tensors
from .slices import slices_of_item
from .walk import DEFAULT_BUDGET, DiscoveryBudget, DiscoveryBudgetError, pruning_group, remapped_nodes

__all__ = ["Trace", "trace", "find_groups", "channel_groups_of", "call_model", "eval_mode"]

@dataclass(eq=False)
class Trace:
    """A dependency graph of a model, with what the model returned and its module names."""

    model: nn.Module
    dg: tp.DependencyGraph
    outputs: set = field(default_factory=set)  # grad_fns of the model's output tensors
    names: dict = field(default_factory=dict)  # module (and traced parameter) -> qualified name

    def output_nodes(self) -> list:
        """Graph nodes whose result is returned by the model."""
        return [n for n in self.dg.module2node.values() if n.grad_fn in self.outputs or not n.outputs]


def trace(
        model: nn.Module,
        example_inputs: Any,
        *,
        forward_fn: Callable | None = None,
        unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] | None = None,
        customized_pruners: dict | None = None,
) -> Trace:
    """Trace ``model`` once with torch-pruning (eval mode, every parameter requiring grad while tracing)."""
    # torch-pruning traces autograd: frozen parameters would leave no graph, so every parameter requires grad
    # while tracing; the flags and the train/eval mode are restored afterwards.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    was_training = model.training
    outputs: set = set()

    def forward(m, x):  # torch-pruning sees the output's tensors only (not a KV cache, not None fields)
        out = output_tensors(call_model(m, x, forward_fn))
        outputs.update(t.grad_fn for t in out)
        return out

    model.eval()
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)  # a transformers model's KV cache is state, not output: off
    try:
        if cached:
            config.use_cache = False
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs, forward_fn=forward, verbose=False,
                unwrapped_parameters=list(unwrapped_parameters) if unwrapped_parameters is not None else None,
                customized_pruners=customized_pruners if customized_pruners is not None else
                default_customized_pruners(model) or None)
    finally:
        if cached:
            config.use_cache = cached
        for p in frozen:
            p.requires_grad_(False)
        # always through train(): modules drop what they cached in eval mode (timm's LeViT keeps its attention biases,
        # here with autograd history from the traced forward, which a deepcopy of the model would refuse)
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    return Trace(model, dg, outputs, names)


def _has_matrix_weight(module: object) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(module, nn.Module) and isinstance(w, torch.Tensor) and w.dim() >= 2


def _activation_after(parent: nn.Module, chain: list[nn.Module]) -> nn.Module | None:
    """The activation applied to a group's units: the parent's ``act`` (adapters, timm ``Mlp``), else the sibling
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


def channel_groups_of(dg: tp.DependencyGraph, tp_group) -> int:
    """Channels per unit of a torch-pruning group: the largest in/out channel grouping of its members (grouped convs,
    GroupNorm), depthwise convs excepted (their in and out channels are one), as torch-pruning's MetaPruner does."""
    g = 1
    for item in tp_group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module):
            continue
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or (isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels):
            continue
        if dg.is_out_channel_pruning_fn(item.dep.handler):
            g = max(g, pruner.get_out_channel_groups(module))
        else:
            g = max(g, pruner.get_in_channel_groups(module))
    return g


def _tied_root_channels(dg: tp.DependencyGraph, root: nn.Module, handler, n: int, names: dict) -> int:
    """How many of the root's own channels torch-pruning removes with its channel 0, for a group that passes a
    concatenation. A concatenation can tie a layer's channels to each other: GhostNet's stem feeds a residual add
    with ``cat([x1, cheap(x1)])``, whose halves are one channel of x1 each, so stem channels j and j + n/2 go
    together. Such a group has n/2 units of 2 channels (like a grouped conv's); a tie of any other shape is refused
    (:class:`UnsupportedLayerError`: the group is left out), since a unit must be the same channels every time."""
    probe = pruning_group(dg, root, handler, [0], names=names)
    tied = sorted({i for item in probe.items if item.dep.target.module is root
                   and dg.is_out_channel_pruning_fn(item.dep.handler) for i in item.idxs})
    k = len(tied)
    if k <= 1:
        return 1
    if n % k or tied != [j * (n // k) for j in range(k)]:
        raise UnsupportedLayerError(f"torch-pruning removes channels {tied[:8]} of {names.get(root, '?')} together "
                                    f"(tied through a concatenation), not a fixed stride of its {n} channels")
    return k


def _build_group(dg: tp.DependencyGraph, root: nn.Module, names: dict[nn.Module, str], kind: str | None,
                 policy: Policy, tp_group=None, static: bool = False) -> Group:
    pruner = dg.get_pruner_of_module(root)
    handler = pruner.prune_out_channels
    if tp_group is None:
        tp_group = pruning_group(dg, root, handler, list(range(pruner.get_out_channels(root))), names=names)
    members: list[Member] = []
    seen = set()
    for item in tp_group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names or not any(True for _ in module.parameters(False)):
            continue  # element-wise ops, reshapes, concat nodes: nothing to prune or score
        if _has_matrix_weight(module) or isinstance(module, nn.RNNBase):
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
    g = channel_groups_of(dg, tp_group)
    n_channels = len(tp_group.items[0].idxs)
    if any(isinstance(item.dep.target.module, ops._ConcatOp) for item in tp_group.items):
        g = max(g, _tied_root_channels(dg, root, handler, n_channels, names))
    width = n_channels // g
    slices: list[ParamSlice] = []
    exact, seen_items = True, set()
    every_channel = list(range(n_channels))
    for item in tp_group.items:
        key = (id(item.dep.target.module), item.dep.handler)
        if key in seen_items or not item.idxs:
            continue
        seen_items.add(key)
        if item.root_idxs == every_channel:  # the usual case: this layer carries every root channel once, in order
            probe, share = item.idxs[::width], 1.0  # unit 0: root channels 0, width, 2 * width ...
        else:
            # root channel r belongs to unit r % width: every unit costs the same when this layer carries the same
            # number of channels of each (behind a concatenation that may be half of each unit's channels)
            units = [r % width for r in item.root_idxs]
            per_unit = Counter(units)
            exact = exact and len(per_unit) == width and len(set(per_unit.values())) == 1
            # probe one unit this layer carries; a layer carrying only some units (behind a concatenation) costs
            # that much for each of them, i.e. on average times the share of units it carries
            probe = [i for i, u in zip(item.idxs, units) if u == units[0]]
            share = len(per_unit) / width
        for s in slices_of_item(dg, item, probe, names):
            slices.append(s._replace(size=s.size * share))
    if kind is None:
        kind = "channel" if isinstance(root, ops.TORCH_CONV) else "neuron"
    every = tp_group if static else None  # pruning other groups first leaves its indices valid
    return Group(names[root], members, _activation_after(parent, chain), kind, policy, g, slices, exact, dg, handler,
                 every, remapped_nodes(tp_group))


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, its train / eval mode as before afterwards (``model.train(mode)``);
    nothing set or restored when every module is in eval mode already. For forwards without grad: what a module
    caches in eval mode then is what any eval forward leaves (the trace, with grad, always goes through train())."""
    if not any(m.training for m in model.modules()):
        yield model
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def call_model(model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> Any:
    """``model`` on ``example_inputs`` the way every prunekit trace and probe calls it: ``forward_fn(model, x)`` when
    given, else ``model(**x)`` for a dict, ``model(*x)`` for a tuple or list, ``model(x)`` otherwise."""
    if forward_fn is not None:
        return forward_fn(model, example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)

def find_groups(
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence | dict | None = None,
        *,
        only: Iterable[nn.Module] | Callable[[str], bool] | None = None,
        root_types: Sequence[type] = DEFAULT_ROOT_TYPES,
        forward_fn: Callable | None = None,
        kind: str | None = None,
        policy: Policy = CHANNEL_POLICY,
        traced: Trace | None = None,
        keep: Callable[[Any], bool] | None = None,
        on_skip: Callable[[str, str], None] | None = None,
        budget: DiscoveryBudget = DEFAULT_BUDGET,
        roots: Callable[[str, nn.Module], bool] | None = None,
) -> list[Group]:
    """All coupled groups of ``model``, traced on ``example_inputs`` (or taken from an existing ``traced``).

    Args:
        model: any ``nn.Module`` torch-pruning can trace.
        example_inputs: a batch the model accepts (one image is enough).
        only: restrict to groups lying entirely inside these modules (or whose members' names satisfy this
            predicate); e.g. the adapters, so the frozen backbone is never touched.
        root_types: layer types that can root a group (their output channels are the units).
        forward_fn: ``forward_fn(model, example_inputs)`` for models that need more than ``model(example_inputs)``.
        kind: the groups' kind (default ``'channel'`` for a conv root, ``'neuron'`` for a Linear root).
        policy: the groups' policy.
        traced: reuse this trace of ``model`` instead of tracing again.
        keep: ``fn(tp_group) -> bool`` on torch-pruning's full-width group, to drop groups before they are built.
        on_skip: ``fn(name, reason)`` for a group torch-pruning cannot slice (its pruning function fails on a
            shape-only copy of a layer) or whose walk went past ``budget``; without it those raise
            :class:`UnsupportedLayerError` / :class:`~prunekit.core.walk.DiscoveryBudgetError`.
        budget: how far one group's walk of the graph may go (:class:`~prunekit.core.walk.DiscoveryBudget`).
        roots: ``fn(name, module) -> bool``: whether a layer may root a group, asked before the graph is walked from
            it (a layer it refuses still joins the group of a root whose walk reaches it).

    Returns:
        Groups in model order; each has at least one producer. A residual stream shared by many layers is one group.
    """
    if traced is None:
        if example_inputs is None:
            raise PrunekitError("find_groups: pass example_inputs (a batch the model accepts) or traced=")
        traced = trace(model, example_inputs, forward_fn=forward_fn)
    dg, names = traced.dg, traced.names

    if only is None:
        inside = lambda name: True  # noqa: E731
    elif callable(only):
        inside = only
    else:
        allowed = {names[sub] for mod in only for sub in mod.modules() if sub in names}
        inside = allowed.__contains__

    with frozen_index_mapping(dg):
        return _find_groups(model, dg, names, inside, root_types, kind, policy, keep, on_skip, budget, roots)


def _find_groups(model: nn.Module, dg: tp.DependencyGraph, names: dict, inside: Callable[[str], bool],
                 root_types: Sequence[type], kind: str | None, policy: Policy, keep: Callable | None,
                 on_skip: Callable | None, budget: DiscoveryBudget, roots: Callable | None) -> list[Group]:
    groups, visited = [], set()
    static = static_mapping(dg)
    for name, module in model.named_modules():
        if not isinstance(module, tuple(root_types)) or module in visited or module not in dg.module2node:
            continue
        if not inside(name) or (roots is not None and not roots(name, module)):
            continue
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            tp_group = pruning_group(dg, module, pruner.prune_out_channels,
                                     list(range(pruner.get_out_channels(module))), budget=budget, names=names)
        except DiscoveryBudgetError as e:
            if on_skip is None:
                raise
            on_skip(name, str(e))
            visited.update(m for m in e.reached if isinstance(m, tuple(root_types)))  # coupled: the same group
            continue
        for item in tp_group.items:
            if dg.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, tuple(root_types)):
                visited.add(item.dep.target.module)
        if keep is not None and not keep(tp_group):
            continue
        try:
            group = _build_group(dg, module, names, kind, policy, tp_group, static)
        except UnsupportedLayerError as e:
            if on_skip is None:
                raise
            on_skip(name, str(e))
            continue
        if all(inside(m.name) for m in group.members):
            groups.append(group)
    return groups

