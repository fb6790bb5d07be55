"""Which channels of which layers go with a root's channels: a walk of the traced graph that always ends.

torch-pruning's ``DependencyGraph.get_pruning_group`` follows every dependency from the root, mapping the channel
indices through each concatenation, split, slice and reshape on the way, and visits a layer again whenever it arrives
there with a list of indices it has not seen *as a list*. Graphs that reach one layer along many paths with differently
mapped lists (torchvision's Swin: window shifts, paddings and patch merging on the residual stream; a decoder's
rotary embedding: halves sliced and concatenated in every layer) make that walk grow without bound: torch-pruning gives
no answer within 90 s under an 8 GB cap for torchvision's ``swin_t`` at 64 px or a two-layer LLaMA with grouped-query
attention (docs/benchmarks.md, section 7b).

:func:`pruning_group` finds the same group (the same layers, handlers and channel indices; every index mapping is
applied one index at a time, so the union does not depend on how the indices are batched) by propagating each
``(channel, root channel)`` pair across a dependency once: a layer is visited again only with pairs it has not seen.
The work is then bounded by the pairs the group holds, and a :class:`DiscoveryBudget` bounds those and the time; a walk
past it stops with :class:`DiscoveryBudgetError`, naming the root, where it was and what to ``ignore=``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping as _tp_index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner import function

from .group import UnsupportedModelError
from .tpcompat import FROZEN_ATTR

__all__ = ["DiscoveryBudget", "DiscoveryBudgetError", "pruning_group", "DEFAULT_BUDGET", "REMAPPED", "remapped_nodes",
           "update_mappings"]

# node types whose index mappings torch-pruning derives from the current channel counts (update_index_mapping)
REMAPPED = (ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.RESHAPE, ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND,
            ops.OPTYPE.SLICE)


def remapped_nodes(tp_group) -> tuple:
    """The nodes of :data:`REMAPPED` type a walk of this group passes (a walk reaches only its group's nodes): the only
    index mappings a later walk of the same group reads that pruning (this group or another) can have moved."""
    nodes: dict = {}
    for item in tp_group.items:
        for node in (item.dep.source, item.dep.target):
            if node.type in REMAPPED:
                nodes[id(node)] = node
    return tuple(nodes.values())


_UPDATE = {ops.OPTYPE.CONCAT: _tp_index_mapping.update_concat_index_mapping,
           ops.OPTYPE.SPLIT: _tp_index_mapping.update_split_index_mapping,
           ops.OPTYPE.RESHAPE: _tp_index_mapping.update_reshape_index_mapping,
           ops.OPTYPE.UNBIND: _tp_index_mapping.update_unbind_index_mapping,
           ops.OPTYPE.EXPAND: _tp_index_mapping.update_expand_index_mapping,
           ops.OPTYPE.SLICE: _tp_index_mapping.update_slice_index_mapping}


def update_mappings(dg: tp.DependencyGraph, nodes) -> None:
    """torch-pruning's ``update_index_mapping`` for ``nodes`` only (the same per-node functions)."""
    for node in nodes:
        _UPDATE[node.type](dg, node)


@dataclass(frozen=True)
class DiscoveryBudget:
    """How far one group's walk may go before it stops (the pairs it holds bound its memory, the seconds its time)."""

    max_pairs: int = 1_000_000  # (layer, channel) pairs, over every layer the group reaches
    max_seconds: float = 20.0  # wall time of one walk

    def __post_init__(self):
        if isinstance(self.max_pairs, bool) or not (isinstance(self.max_pairs, int) and self.max_pairs > 0):
            raise ValueError(f"DiscoveryBudget.max_pairs: expected a positive int, got {self.max_pairs!r}")
        if not (isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0):
            raise ValueError(f"DiscoveryBudget.max_seconds: expected a positive number, got {self.max_seconds!r}")


DEFAULT_BUDGET = DiscoveryBudget()


class DiscoveryBudgetError(UnsupportedModelError):
    """A group's walk went past its :class:`DiscoveryBudget`; nothing was modified.

    Attributes:
        root: the name of the layer whose channels rooted the walk.
        reached: the modules the walk had reached (all coupled to the root: they belong to the same group).
    """

    def __init__(self, message: str, root: str, reached: list):
        super().__init__(message)
        self.root, self.reached = root, reached


def _label(node, names: dict) -> str:
    module = node.module
    return names.get(module) or getattr(node, "name", None) or type(module).__name__


def pruning_group(dg: tp.DependencyGraph, module: nn.Module, pruning_fn, idxs: Sequence[int], *,
                  budget: DiscoveryBudget = DEFAULT_BUDGET, names: dict | None = None, update=True):
    """torch-pruning's group of ``module``'s channels ``idxs`` under ``pruning_fn`` (a ``torch_pruning`` ``Group`` whose
    items carry ``root_idxs``, as ``dg.get_pruning_group`` returns it), found by a walk bounded by ``budget``.

    ``update``: which of torch-pruning's index mappings to recompute first (they follow the channel counts, which a
    prune changes): True, every one of the graph (torch-pruning's choice); a sequence of nodes, those only (the
    :func:`remapped_nodes` of a group found before: a walk reads no other). Inside
    :func:`~prunekit.core.tpcompat.frozen_index_mapping` none is recomputed.

    Raises:
        DiscoveryBudgetError: the walk went past ``budget`` (nothing is modified).
    """
    if module not in dg.module2node:
        raise ValueError(f"module {module} is not in the dependency graph")
    if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    if not getattr(dg, FROZEN_ATTR, False):
        if update is True:
            _tp_index_mapping.update_index_mapping(dg)
        else:
            update_mappings(dg, update)
    names = names if names is not None else {m: n for n, m in dg.model.named_modules()}
    start = time.perf_counter()

    root_node = dg.module2node[module]
    first = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    root_dep = Dependency(pruning_fn, pruning_fn, source=root_node, target=root_node)
    # (target node, handler) -> [dep of the first arrival, pairs in arrival order, set of the pairs]
    found: dict[tuple, list] = {(root_node, pruning_fn): [root_dep, list(first), set(first)]}
    pairs, steps = len(first), 0
    stack = [(root_dep, first)]
    while stack:
        dep, current = stack.pop()
        node, fn = dep.target, dep.handler
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            mapped = current
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            if not mapped:
                continue
            key = (new_dep.target, new_dep.handler)
            entry = found.get(key)
            if entry is None:
                entry = found[key] = [new_dep, [], set()]
            seen = entry[2]
            fresh = []
            for pair in mapped:
                if pair not in seen:
                    seen.add(pair)
                    fresh.append(pair)
            if not fresh:
                continue
            entry[1].extend(fresh)
            pairs += len(fresh)
            stack.append((new_dep, fresh))
        steps += 1
        if pairs > budget.max_pairs or (steps % 64 == 0 and time.perf_counter() - start > budget.max_seconds):
            _stop(module, node, found, pairs, time.perf_counter() - start, budget, names)

    group = tp.Group()
    for (target, _), (dep, got, _) in found.items():
        if isinstance(target.module, nn.Parameter) and any(target.module is p for p in dg.ignored_params):
            continue
        by_idx, kept = set(), []
        for pair in got:  # one entry per channel, its first root channel (as torch-pruning merges them)
            if pair.idx not in by_idx:
                by_idx.add(pair.idx)
                kept.append(pair)
        item = _helpers.GroupItem(dep=dep, idxs=_helpers.to_plain_idxs(kept))
        item.root_idxs = _helpers.to_root_idxs(kept)
        group.items.append(item)
    group._DG = dg
    return group


def _stop(root: nn.Module, at, found: dict, pairs: int, elapsed: float, budget: DiscoveryBudget, names: dict):
    root_name = names.get(root, type(root).__name__)
    reached = [key[0].module for key in found if isinstance(key[0].module, nn.Module)]
    layers = sorted({names[m] for m in reached if m in names and any(True for _ in m.parameters(False))})
    shown = ", ".join(layers[:6]) + (f" and {len(layers) - 6} more" if len(layers) > 6 else "")
    raise DiscoveryBudgetError(
        f"the group of {root_name}'s channels did not close within the discovery budget ({pairs:,} channel pairs over "
        f"{len(found):,} dependencies in {elapsed:.1f} s; max_pairs={budget.max_pairs:,}, max_seconds="
        f"{budget.max_seconds:g}); stopped at {_label(at, names)}, having reached {shown}; keep its channels with "
        f"ignore=[{root_name!r}], or raise the budget (discovery=DiscoveryBudget(...))", root_name, reached)
