"""Slicing heads and head dimensions out of an attention module, in place: every tensor of the layout loses the same
blocks, the counting attributes follow, and a forward that reads the input width switches to its layout's class."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .layouts import HeadLayout, HeadSlice, UnsupportedAttentionError



def units_of(m: nn.Module, layout: HeadLayout) -> int:
    """How many units (heads, or key/value heads with their query heads) ``m`` has now."""
    if layout.heads_attr is None:
        return int(layout.count(m))
    owner, attr = owner_of(m, layout.heads_attr)
    return int(getattr(owner, attr))


def set_attr(m: nn.Module, path: str, value: int) -> None:
    owner, attr = owner_of(m, path)
    setattr(owner, attr, value)


def owner_of(m: nn.Module, path: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = path.rpartition(".")
    return (m.get_submodule(mod_name) if mod_name else m), attr


def tensor_at(m: nn.Module, path: str) -> torch.Tensor | None:
    try:
        owner, attr = owner_of(m, path)
    except AttributeError:
        return None
    t = getattr(owner, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def present(m: nn.Module, layout: HeadLayout) -> list[tuple[HeadSlice, torch.Tensor]]:
    return [(s, t) for s in layout.slices if (t := tensor_at(m, s.path)) is not None]


def head_dim_of(m: nn.Module, layout: HeadLayout) -> int:
    s, t = present(m, layout)[0]
    return t.shape[s.dim] // (s.repeats * units_of(m, layout))


def check_shapes(m: nn.Module, layout: HeadLayout) -> None:
    cls, heads = type(m).__qualname__, units_of(m, layout)
    tensors = present(m, layout)
    if not any(s.role == "row" for s, _ in tensors) or not any(s.role == "column" for s, _ in tensors):
        raise UnsupportedAttentionError(f"{cls}: its layout has no q/k/v rows or no proj columns")
    hd = head_dim_of(m, layout)
    for s, t in tensors:
        size = t.shape[s.dim]
        if size % (s.repeats * heads) or (s.within_head and size != s.repeats * heads * hd):
            want = f"{s.repeats} x num_heads={heads} x head_dim={hd}" if s.within_head else \
                f"a multiple of {s.repeats} x num_heads={heads}"
            raise UnsupportedAttentionError(f"{cls}: {s.path} has {size} entries along dim {s.dim}, expected {want}")


def _block_index(size: int, repeats: int, heads: int, keep_heads: Sequence[int], block: int,
                 keep_within: Sequence[int] | None = None) -> torch.Tensor:
    """Indices along a ``[repeats x heads x block]`` axis that survive (``keep_within`` = kept entries of a block)."""
    within = torch.arange(block) if keep_within is None else torch.as_tensor(list(keep_within), dtype=torch.long)
    starts = torch.tensor([(j * heads + h) * block for j in range(repeats) for h in keep_heads], dtype=torch.long)
    idx = (starts[:, None] + within[None, :]).reshape(-1)
    assert size == repeats * heads * block, f"axis of {size} is not {repeats} x {heads} x {block}"
    return idx


def _replace(m: nn.Module, path: str, new: torch.Tensor) -> None:
    owner, attr = owner_of(m, path)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    else:
        owner._buffers[attr] = new.contiguous()


def _sync_metadata(m: nn.Module, layout: HeadLayout) -> None:
    """Shape attributes of the sliced sub-layers (Linear features, LayerNorm normalized_shape)."""
    owners = {owner_of(m, s.path)[0] for s in layout.slices if tensor_at(m, s.path) is not None}
    for o in owners:
        if isinstance(o, nn.Linear):
            o.out_features, o.in_features = o.weight.shape
        elif isinstance(getattr(o, "nf", None), int) and o.weight.dim() == 2:  # transformers' Conv1D: (in, out)
            o.nx, o.nf = o.weight.shape
        elif isinstance(o, nn.LayerNorm) and o.weight is not None:
            o.normalized_shape = (o.weight.shape[0],)


def _switch_forward(m: nn.Module, layout: HeadLayout) -> None:
    if layout.forward_cls is not None and type(m) is not layout.forward_cls:
        m.__class__ = layout.forward_cls
    if layout.on_resize is not None:
        layout.on_resize(m)


@torch.no_grad()
def slice_heads(m: nn.Module, layout: HeadLayout, drop: Sequence[int]) -> None:
    heads = units_of(m, layout)
    hd = head_dim_of(m, layout)
    keep = [h for h in range(heads) if h not in set(drop)]
    for s, t in present(m, layout):
        block = t.shape[s.dim] // (s.repeats * heads)
        idx = _block_index(t.shape[s.dim], s.repeats, heads, keep, block).to(t.device)
        _replace(m, s.path, t.index_select(s.dim, idx))
    _sync_metadata(m, layout)
    if layout.heads_attr is not None:
        set_attr(m, layout.heads_attr, len(keep))
    for a in layout.count_attrs:
        set_attr(m, a, len(keep))
    for a in layout.width_attrs:
        set_attr(m, a, len(keep) * hd)
    _switch_forward(m, layout)


@torch.no_grad()
def slice_head_dims(m: nn.Module, layout: HeadLayout, drop: Sequence[int]) -> None:
    heads = units_of(m, layout)
    hd = head_dim_of(m, layout)
    keep = [d for d in range(hd) if d not in set(drop)]
    q_path, q_block = layout.query
    for s, t in present(m, layout):
        if not s.within_head:
            continue
        idx = _block_index(t.shape[s.dim], s.repeats, heads, range(heads), hd, keep).to(t.device)
        new = t.index_select(s.dim, idx)
        if s.path.startswith(q_path + ".") and s.dim == 0:  # fold the temperature change into the q rows
            rows = heads * len(keep)
            new[q_block * rows:(q_block + 1) * rows] *= math.sqrt(len(keep) / hd)
        _replace(m, s.path, new)
    _sync_metadata(m, layout)
    if layout.head_dim_attr is not None:
        setattr(m, layout.head_dim_attr, len(keep))
    for a in layout.width_attrs:
        set_attr(m, a, heads * len(keep))
    m.scale = len(keep) ** -0.5
    _switch_forward(m, layout)
