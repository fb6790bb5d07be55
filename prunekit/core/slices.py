"""What pruning one unit of a group removes from each tensor: torch-pruning's pruning function run on a shape-only
copy of each layer (meta tensors, no memory), the shape differences read back as :class:`ParamSlice` s. Plain layers
(conv, linear, norms) give the same answer for the same type and shapes, so those answers are cached."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from .group import ParamSlice, UnsupportedLayerError

__all__ = ["slices_of_item", "meta_clone"]


# Layers (and subclasses, e.g. timm's BatchNormAct2d) whose pruned shapes follow from their parameter shapes (and conv
# groups) alone: slices_of_item caches them by type, handler and shapes.
_PLAIN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                 nn.LayerNorm, nn.GroupNorm)
_SLICE_CACHE: dict[tuple, list[tuple[str, int, float]]] = {}


def meta_clone(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose tensors live on the meta device (shapes only, no memory).

    A module whose tensors are all its own (conv, linear, norm, timm's norm + activation: nearly every item of a group)
    is copied shallowly with new parameter and buffer dicts, which is all a torch-pruning handler replaces; a module
    whose children hold tensors is deep-copied (memo: meta tensors).
    """
    def meta_param(p):
        return None if p is None else nn.Parameter(torch.empty(p.shape, device="meta"), requires_grad=p.requires_grad)

    def meta_buffer(b):
        return None if b is None else torch.empty(b.shape, device="meta", dtype=b.dtype)

    if not any(True for c in module.children() for _ in (*c.parameters(), *c.buffers())):
        # children without tensors (BatchNormAct2d's activation): shared, a handler only slices the layer's own
        clone = copy.copy(module)
        clone.__dict__["_parameters"] = {n: meta_param(p) for n, p in module._parameters.items()}
        clone.__dict__["_buffers"] = {n: meta_buffer(b) for n, b in module._buffers.items()}
        clone.__dict__["_modules"] = dict(module._modules)
        if isinstance(module.__dict__.get("_flat_weights"), list):  # a recurrent layer's own list of its weights,
            # which its __setattr__ updates in place: the clone's must not be the original's
            clone.__dict__["_flat_weights"] = [clone._parameters.get(n) for n in module._flat_weights_names]
        return clone
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = meta_param(p)
    for b in module.buffers():
        memo[id(b)] = meta_buffer(b)
    return copy.deepcopy(module, memo)


def slices_of_item(dg: tp.DependencyGraph, item, unit_idxs: list[int], names: dict) -> list[ParamSlice]:
    """Which tensor dims shrink, by how much, when the channels ``unit_idxs`` of this item's target go."""
    target = item.dep.target
    if target.type == ops.OPTYPE.PARAMETER:  # a stray nn.Parameter (cls token, layer scale ...)
        name = dg._param_to_name.get(target.module)
        if name is None:
            return []
        owner_name, _, attr = name.rpartition(".")
        owner = dg.model.get_submodule(owner_name) if owner_name else dg.model
        dim = target.pruning_dim % target.module.dim()
        return [ParamSlice(owner, attr, dim, float(len(unit_idxs)))]
    module = target.module
    if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
        return []
    before = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False)}
    key = None
    if isinstance(module, _PLAIN_LAYERS):  # shape arithmetic only: the same answer for the same type and shapes
        key = (type(module), item.dep.handler, tuple(before.items()), getattr(module, "groups", None),
               len(unit_idxs))
        hit = _SLICE_CACHE.get(key)
        if hit is not None:
            return [ParamSlice(module, n, d, size) for n, d, size in hit]
    clone = meta_clone(module)
    try:
        item.dep.handler(clone, sorted(unit_idxs))
    except Exception as e:  # noqa: BLE001 - the real layer would fail the same way when pruned
        raise UnsupportedLayerError(f"torch-pruning cannot slice {names.get(module, type(module).__name__)} "
                                    f"({type(module).__name__}: {type(e).__name__}: {str(e)[:120]})") from None
    out = []
    for n, shape in before.items():
        new = getattr(clone, n, None)
        new_shape = tuple(new.shape) if isinstance(new, torch.Tensor) else shape
        for d, (a, b) in enumerate(zip(shape, new_shape)):
            if a != b:
                out.append(ParamSlice(module, n, d, float(a - b)))
    if key is not None:
        if len(_SLICE_CACHE) > 4096:
            _SLICE_CACHE.clear()
        _SLICE_CACHE[key] = [(s.attr, s.dim, s.size) for s in out]
    return out
