"""torch-pruning, as prunekit needs it: pruners it lacks, one index mapping per search, groups cut instead of walked.

- :func:`default_customized_pruners`: a GroupNorm without weight or bias (timm's ``GroupNorm1NoBias``), which
  torch-pruning's own GroupNorm pruner cannot slice, and transformers' ``Conv1D`` (GPT-2), which it does not know;
- :func:`frozen_index_mapping`: while groups are found, torch-pruning's index mappings are computed once instead of
  before every walk of the graph;
- :func:`subgroup` / :func:`static_mapping`: in a graph without concatenations, splits and slices, the group of some
  root channels is cut from the group of every channel instead of walking the graph again.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers as _tp_helpers, ops
from torch_pruning.dependency import index_mapping as _tp_index_mapping


__all__ = ["default_customized_pruners", "extra_root_types", "recurrent_problem", "frozen_index_mapping",
           "static_mapping", "subgroup", "FROZEN_ATTR"]

FROZEN_ATTR = "_prunekit_index_mapping_frozen"  # on a graph inside frozen_index_mapping: its mappings are current


class _GroupNormPruner(tp.pruner.function.GroupNormPruner):
    """torch-pruning's GroupNorm pruner, also for a GroupNorm without bias or weight (timm's ``GroupNorm1NoBias``)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.num_channels)) - set(idxs))
        layer.num_channels = layer.num_channels - len(idxs)
        for attr in ("weight", "bias"):
            p = getattr(layer, attr, None)
            if isinstance(p, nn.Parameter):
                setattr(layer, attr, self._prune_parameter_and_grad(p, keep, 0))
        return layer

    prune_in_channels = prune_out_channels


class _Conv1DPruner(tp.pruner.function.BasePruningFunc):
    """transformers' ``Conv1D`` (GPT-2's projections): a Linear whose weight is stored ``(in, out)``."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[1])) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if getattr(layer, "bias", None) is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if hasattr(layer, "nx"):
            layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


class _RecurrentPruner(tp.pruner.function.BasePruningFunc):
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` hidden units: unit j is hidden unit j of every layer, i.e. rows
    ``g * H + j`` of every gate g in ``weight_ih_l<k>``, ``weight_hh_l<k>`` and both biases, column j of every
    ``weight_hh_l<k>`` and of ``weight_ih_l<k>`` for k > 0 (torch-pruning's own LSTM pruner slices the gates
    inconsistently). Unidirectional, without ``proj_size``; :func:`recurrent_problem` names the others."""

    def prune_out_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.Module:
        hidden = layer.hidden_size
        keep = sorted(set(range(hidden)) - set(idxs))
        gates = _gates(layer)
        rows = [g * hidden + j for g in range(gates) for j in keep]
        for k in range(layer.num_layers):
            for name, dims in ((f"weight_ih_l{k}", (0, 1) if k else (0,)), (f"weight_hh_l{k}", (0, 1)),
                               (f"bias_ih_l{k}", (0,)), (f"bias_hh_l{k}", (0,))):
                p = getattr(layer, name, None)
                if p is None:
                    continue
                for d in dims:
                    p = self._prune_parameter_and_grad(p, rows if d == 0 else keep, d)
                setattr(layer, name, p)
        layer.hidden_size = len(keep)
        layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
        return layer

    def prune_in_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.input_size)) - set(idxs))
        layer.weight_ih_l0 = self._prune_parameter_and_grad(layer.weight_ih_l0, keep, 1)
        layer.input_size = len(keep)
        layer._flat_weights = [getattr(layer, n) for n in layer._flat_weights_names]
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size


def _gates(layer: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(layer.mode, 1)


def recurrent_problem(layer: nn.RNNBase) -> str | None:
    """Why a recurrent layer's hidden units are not a group (None: they are)."""
    if layer.bidirectional:
        return "bidirectional (its output holds each unit twice, forward and backward)"
    if getattr(layer, "proj_size", 0):
        return f"proj_size={layer.proj_size} (the recurrent state is the projection, not the hidden units)"
    return None


def _is_hf_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers.") and \
        isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() == 2


def extra_root_types(model: nn.Module) -> tuple[type, ...]:
    """Layer types of ``model`` that prunekit's pruners teach torch-pruning and whose output channels root groups
    like a Linear's (transformers' ``Conv1D``, recurrent layers)."""
    return tuple({type(m) for m in model.modules() if _is_hf_conv1d(m) or (
        isinstance(m, nn.RNNBase) and recurrent_problem(m) is None)})


def default_customized_pruners(model: nn.Module) -> dict:
    """Pruners torch-pruning lacks for layers of ``model``: GroupNorms without bias or weight, transformers'
    ``Conv1D``."""
    out = {}
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and (m.bias is None or m.weight is None):
            out[type(m)] = _GroupNormPruner()
        elif _is_hf_conv1d(m):
            out[type(m)] = _Conv1DPruner()
        elif isinstance(m, nn.RNNBase):
            out[type(m)] = _RecurrentPruner()
    return out


@contextlib.contextmanager
def frozen_index_mapping(dg: tp.DependencyGraph):
    """Inside the block, every walk of ``dg`` (:func:`~prunekit.core.walk.pruning_group`) reuses one index mapping
    instead of recomputing it.

    torch-pruning recomputes the index mappings of every concatenation, split and reshape of the whole graph before
    each walk, because a prune in between changes the channel counts they are derived from. Finding groups prunes
    nothing, so one computation at the start serves every walk (with dozens of concatenations, as in GhostNet or
    DenseNet, the recomputations were a large share of finding the groups). Nothing may be pruned through ``dg``
    inside the block; :meth:`Group.prune` is never called in one. Only ``dg`` is marked: torch-pruning itself is not
    changed.
    """
    if getattr(dg, FROZEN_ATTR, False):  # nested: the outer block computed it
        yield dg
        return
    _tp_index_mapping.update_index_mapping(dg)  # a reused trace may have been pruned since it was built
    setattr(dg, FROZEN_ATTR, True)
    try:
        yield dg
    finally:
        delattr(dg, FROZEN_ATTR)


# Node types whose index mappings torch-pruning recomputes from the current channel counts: in a graph with none of
# them but reshapes (which map one group's own channels), pruning one group never moves another group's indices.
_SHIFTING = (ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND, ops.OPTYPE.SLICE)


def static_mapping(dg: tp.DependencyGraph) -> bool:
    """Whether every group's channel indices in ``dg`` stay where they are when other groups are pruned."""
    return not any(node.type in _SHIFTING for node in dg.module2node.values())


def subgroup(every, channels: Sequence[int]):
    """torch-pruning's group for root ``channels``, cut from its group of every channel: each item keeps the indices
    that root channels in ``channels`` map to (what ``pruning_group(dg, root, fn, channels)`` finds again by walking
    the graph, without the walk). None when the full group's items carry no root indices."""
    wanted, channels = set(channels), sorted(channels)
    every_channel = list(range(len(every.items[0].idxs)))
    out = type(every)()
    for item in every.items:
        root_idxs = item.root_idxs
        if root_idxs is None or len(root_idxs) != len(item.idxs):
            return None
        if root_idxs == every_channel:  # the usual case: root channel r at position r
            idxs, roots = [item.idxs[r] for r in channels], list(channels)
        else:
            pairs = [(i, r) for i, r in zip(item.idxs, root_idxs) if r in wanted]
            idxs, roots = [i for i, _ in pairs], [r for _, r in pairs]
        if not idxs:
            continue
        cut = _tp_helpers.GroupItem(dep=item.dep, idxs=idxs)
        cut.root_idxs = roots
        out.items.append(cut)
    out._DG = every._DG
    return out
