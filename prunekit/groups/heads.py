"""Attention heads (and within-head dimensions) as prunable groups.

A head is one unit of a multi-head attention module: every tensor that computes or reads head h loses one block::

    head group h := {rows:    q, k, v rows of head h      (qkv.weight [q heads | k heads | v heads], qkv.bias)
                     columns: proj input columns of head h (proj.weight[:, h*hd:(h+1)*hd])
                     others:  per-head tables / params     (relative_position_bias_table[:, h], ...)}
                    and the module's ``num_heads`` (and ``attn_dim``) updated.

Worked example: a ViT-Ti attention, C = 192, H = 3 heads of hd = 64. ``qkv.weight`` is (3*3*64, 192) laid out as
``[q0 q1 q2 | k0 k1 k2 | v0 v1 v2]`` (64 rows each); removing head 1 keeps rows ``q0 q2 | k0 k2 | v0 v2`` (384 rows),
the proj columns ``0..63`` and ``128..191`` (proj becomes Linear(128, 192)), and sets ``num_heads = 2`` and
``attn_dim = 128``. The output keeps its 192 channels, so nothing outside the module changes. One head here is
``unit_params() = 3*64*192 + 3*64 + 192*64 = 49_344`` parameters.

A **head_dim** group (kind ``head_dim``) is the transpose: dimension d of every head, i.e. q, k and v row ``d`` of each
head and the matching proj columns. Removing dimensions also changes the softmax temperature ``1/sqrt(hd)``: timm's
fused path (``scaled_dot_product_attention`` without ``scale=``) derives it from the new width, the manual path reads
``self.scale``. Both are kept equal to the *old* temperature by folding ``sqrt(hd'/hd)`` into the q rows and setting
``scale = hd' ** -0.5``, so removing dimensions whose q/k (or v and proj) weights are zero leaves the output unchanged.

**Which modules.** Every module carrying an integer ``num_heads`` attribute (set in its ``__init__``) is a candidate,
except prunekit's own wrappers (which forward attribute look-ups) and blocks that only store it for an attention inside
them (no ``qkv``/``q``/``k``/``v``/``kv``/``proj`` child but a descendant with ``num_heads``: DaViT's
``SpatialBlock``). :func:`attention_modules` returns the candidates for which a :class:`HeadLayout` resolves:

- a registered class (:func:`register_head_layout`): timm ``Attention`` (ViT, DeiT and every model built from
  ``timm.layers.Attention``), ``AttentionRope`` (ViT-RoPE; not grouped-query), Swin ``WindowAttention`` (plus its
  relative position bias table), PVT-v2 ``Attention`` (separate ``q`` and ``kv`` Linears);
- any other class with a fused ``qkv`` ``nn.Linear`` (or ``q``/``k``/``v``, or ``q``/``kv`` Linears) and an output
  ``proj`` ``nn.Linear``, no direct parameters, no buffer with a ``num_heads``-long axis and no other parameterised
  child. Its layout is *verified* before it is accepted: a copy with random weights, pruned by one head, must compute
  what the unpruned copy computes with that head's proj columns zeroed, on a (2, 5, C) input.

Anything else that has ``num_heads`` (LeViT's ``LinearNorm`` qkv with interleaved per-head q/k/v, CaiT's
talking-heads ``proj_l``/``proj_w``, XCiT's per-head ``temperature``, BEiT's separate q/v biases, forwards that need
more than ``x`` or reshape with the input width) is refused by :func:`head_groups` with an
:class:`UnsupportedAttentionError` naming the module and the reason, before anything is modified; pass its name in
``ignore=`` to prune the rest.

**Norms.** ``q_norm`` / ``k_norm`` act on one head's ``head_dim`` and are shared by all heads: head pruning leaves
them alone, head-dim pruning is not offered with them. timm's ``scale_norm`` normalises all heads' outputs together:
its weight and bias are sliced per head, so the module stays well formed, but removing a head then changes the other
heads' normalisation, and masking no longer equals slicing there.

**Forwards that read the input width.** Some forwards end with ``x.transpose(1, 2).reshape(B, N, C)``, C being the
*input* width, which only works while ``num_heads * head_dim == C``. timm 1.0.31's ``Attention`` reshapes with
``self.attn_dim`` and Swin's with ``-1``, so both keep working; PVT-v2's reads C, so its layout names an equivalent
subclass whose forward reshapes with ``-1``, and pruning switches the instance to it (``module.__class__ = ...``):
same parameters, same state-dict keys, same hooks, ``isinstance`` unchanged, and nothing written on other modules.

Over 300 lines on purpose: the registered layouts, the generic fallback and the check that pruning a head equals
masking it describe one group kind; split them and a layout could be registered without the check.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention as TimmAttention
from timm.layers.attention import AttentionRope as TimmAttentionRope
from timm.models import pvt_v2, swin_transformer
from torch import nn

from ..core.policy import Policy
from ..registry import PrunekitError, TypeRegistry
from ..core.wrapper import BaseLayerWrapper

__all__ = [
    "HeadSlice",
    "HeadLayout",
    "HeadGroup",
    "HeadDimGroup",
    "UnsupportedAttentionError",
    "HEAD_LAYOUTS",
    "register_head_layout",
    "attention_modules",
    "head_layout",
    "head_groups",
    "head_dim_groups",
]


class UnsupportedAttentionError(PrunekitError, ValueError):
    """An attention module whose heads prunekit cannot slice safely (the message names it and says why)."""


@dataclass(frozen=True)
class HeadSlice:
    """One tensor of an attention module and how its ``dim`` enumerates heads.

    Along ``dim`` the tensor is ``repeats`` blocks of ``num_heads`` heads; a head's block is ``head_dim`` wide when
    ``within_head`` (q/k/v rows, proj columns, a norm over the heads' outputs) and any fixed width otherwise (one
    column of a relative position bias table). Example: fused ``qkv.weight`` is ``HeadSlice('qkv.weight', 0, 3,
    'row')``; Swin's table is ``HeadSlice('relative_position_bias_table', 1, within_head=False)``.

    Attributes:
        path: tensor (parameter or buffer) name inside the attention module, e.g. ``'qkv.weight'``.
        dim: the axis that enumerates heads.
        repeats: how many ``[head 0 .. head H-1]`` blocks lie along ``dim`` (3 for fused q, k, v).
        role: ``'row'`` computes the heads (scored by ``rows()``), ``'column'`` reads them (``columns()``),
            ``'other'`` is only sliced.
        within_head: a head's block is ``head_dim`` wide, so head-dim pruning slices it too.
    """

    path: str
    dim: int
    repeats: int = 1
    role: Literal["row", "column", "other"] = "other"
    within_head: bool = True


@dataclass(frozen=True)
class HeadLayout:
    """Where the heads of one attention module live.

    Attributes:
        slices: every tensor sliced when a head goes (missing optional tensors such as a ``None`` bias are skipped).
        width_attrs: integer attributes equal to ``num_heads * head_dim`` that the forward reads (timm's ``attn_dim``).
        count_attrs: integer attributes equal to ``num_heads`` besides it (``num_kv_heads`` without grouped queries).
        head_dim_attr: attribute holding ``head_dim`` (updated by head-dim pruning), None if the forward infers it.
        query: ``(path of the q weight, block)`` for head-dim pruning, whose temperature is folded into q rows
            (``('qkv', 0)``: block 0 of qkv); None when head-dim pruning is not supported for this module.
        forward_cls: equivalent subclass the instance switches to when pruned (for forwards reading the input width).
    """

    slices: tuple[HeadSlice, ...]
    width_attrs: tuple[str, ...] = ()
    count_attrs: tuple[str, ...] = ()
    head_dim_attr: str | None = None
    query: tuple[str, int] | None = None
    forward_cls: type[nn.Module] | None = None


LayoutFn = Callable[[nn.Module], HeadLayout]
HEAD_LAYOUTS: TypeRegistry[LayoutFn] = TypeRegistry("head layout", entry_point_group="prunekit.head_layouts",
                                                    builtins=(__name__,))


def register_head_layout(cls: type, fn: LayoutFn | None = None, *, overwrite: bool = False):
    """Register ``fn(module) -> HeadLayout`` for attention class ``cls`` (exact type); usable as a decorator.

    ``fn`` raises :class:`UnsupportedAttentionError` for instances it cannot handle (e.g. a configuration flag). A
    layout with a ``forward_cls`` registers the same ``fn`` for that class too, so a pruned instance resolves again.
    """

    return HEAD_LAYOUTS.register(cls, fn, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------------------- layouts

def _linear_slices(name: str, repeats: int, role: Literal["row", "column"]) -> tuple[HeadSlice, ...]:
    if role == "row":
        return HeadSlice(f"{name}.weight", 0, repeats, "row"), HeadSlice(f"{name}.bias", 0, repeats)
    return (HeadSlice(f"{name}.weight", 1, repeats, "column"),)


def _is_identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _timm_attention_layout(m: nn.Module) -> HeadLayout:
    slices = _linear_slices("qkv", 3, "row") + _linear_slices("proj", 1, "column")
    if getattr(m, "gate", None) is not None:  # gated attention: one sigmoid gate per attention channel
        slices += _linear_slices("gate", 1, "row")
    if not _is_identity(m.norm):  # scale_norm: a norm over all heads' outputs; sliced per head (not output-preserving)
        slices += (HeadSlice("norm.weight", 0), HeadSlice("norm.bias", 0))
    qk_norm = not (_is_identity(m.q_norm) and _is_identity(m.k_norm))
    return HeadLayout(slices, width_attrs=("attn_dim",), head_dim_attr="head_dim",
                      query=None if qk_norm else ("qkv", 0))


def _timm_attention_rope_layout(m: nn.Module) -> HeadLayout:
    if m.num_kv_groups != 1:
        raise UnsupportedAttentionError(f"AttentionRope: grouped-query attention (num_kv_heads={m.num_kv_heads} for "
                                        f"num_heads={m.num_heads}) shares k/v heads between q heads; not supported")
    if m.qkv is not None:
        slices = _linear_slices("qkv", 3, "row")
    else:
        slices = sum((_linear_slices(n, 1, "row") for n in ("q_proj", "k_proj", "v_proj")), ())
    slices += _linear_slices("proj", 1, "column")
    if getattr(m, "gate", None) is not None:
        slices += _linear_slices("gate", 1, "row")
    if not _is_identity(m.norm):
        slices += (HeadSlice("norm.weight", 0), HeadSlice("norm.bias", 0))
    # rotary embeddings rotate pairs of dimensions within a head, so head-dim pruning is not offered (query=None)
    return HeadLayout(slices, width_attrs=("attn_dim", "kv_dim"), count_attrs=("num_kv_heads",))


def _swin_window_attention_layout(m: nn.Module) -> HeadLayout:
    slices = (_linear_slices("qkv", 3, "row") + _linear_slices("proj", 1, "column")
              + (HeadSlice("relative_position_bias_table", 1, within_head=False),))
    return HeadLayout(slices, query=("qkv", 0))


def _pvt_v2_attention_layout(m: nn.Module) -> HeadLayout:
    # q: (H*hd, C); kv: [k heads | v heads]; sr / norm act on the input (C channels) and are not per head.
    slices = _linear_slices("q", 1, "row") + _linear_slices("kv", 2, "row") + _linear_slices("proj", 1, "column")
    return HeadLayout(slices, head_dim_attr="head_dim", query=("q", 0), forward_cls=_PvtV2AttentionAnyWidth)


class _PvtV2AttentionAnyWidth(pvt_v2.Attention):
    """timm 1.0.31 PVT-v2 ``Attention`` whose forward reshapes the heads' output with ``-1`` instead of the input
    width C, so it works once ``num_heads * head_dim != C`` (identical otherwise)."""

    def forward(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = feat_size
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        if self.pool is not None:
            x = x.permute(0, 2, 1).reshape(B, C, H, W)
            x = self.act(self.norm(self.sr(self.pool(x)).reshape(B, C, -1).permute(0, 2, 1)))
        elif self.sr is not None:
            x = x.permute(0, 2, 1).reshape(B, C, H, W)
            x = self.norm(self.sr(x).reshape(B, C, -1).permute(0, 2, 1))
        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, -1)  # (B, N, num_heads * head_dim); timm writes C here
        return self.proj_drop(self.proj(x))


register_head_layout(TimmAttention, _timm_attention_layout)
register_head_layout(TimmAttentionRope, _timm_attention_rope_layout)
register_head_layout(swin_transformer.WindowAttention, _swin_window_attention_layout)
register_head_layout(pvt_v2.Attention, _pvt_v2_attention_layout)
register_head_layout(_PvtV2AttentionAnyWidth, _pvt_v2_attention_layout)  # a pruned instance keeps its layout


# ---------------------------------------------------------------------------------------------------- generic layout

_GENERIC_PRODUCERS = (("qkv", 3),), (("q", 1), ("k", 1), ("v", 1)), (("q", 1), ("kv", 2))
_GENERIC_WIDTH_ATTRS = ("attn_dim", "all_head_dim")


def _generic_layout(m: nn.Module) -> HeadLayout:
    """Layout of an unregistered module with fused or separate q/k/v Linears and a ``proj`` Linear (not verified)."""
    cls = type(m).__qualname__
    children = dict(m.named_children())
    producers = next((p for p in _GENERIC_PRODUCERS if all(isinstance(children.get(n), nn.Linear) for n, _ in p)), None)
    if producers is None:
        found = {n: type(c).__name__ for n, c in children.items() if n in ("qkv", "q", "k", "v", "kv")}
        raise UnsupportedAttentionError(
            f"{cls}: no fused 'qkv' nn.Linear (nor q/k/v or q/kv Linears); found {found or 'none'}")
    if not isinstance(children.get("proj"), nn.Linear):
        raise UnsupportedAttentionError(f"{cls}: no output 'proj' nn.Linear (found "
                                        f"{type(children['proj']).__name__ if 'proj' in children else 'none'})")
    own = [n for n, _ in m.named_parameters(recurse=False)]
    if own:
        raise UnsupportedAttentionError(f"{cls}: direct parameters {own} of unknown per-head layout; register a "
                                        "HeadLayout for this class (prunekit.groups.heads.register_head_layout)")
    heads = m.num_heads
    per_head_buffers = [n for n, b in m.named_buffers(recurse=False) if b is not None and heads in b.shape]
    if per_head_buffers:
        raise UnsupportedAttentionError(f"{cls}: buffers {per_head_buffers} have a num_heads={heads} axis of unknown "
                                        "meaning; register a HeadLayout for this class")
    known = {n for n, _ in producers} | {"proj"}
    extra = [n for n, c in children.items() if n not in known and any(True for _ in c.parameters())]
    if extra:
        raise UnsupportedAttentionError(f"{cls}: parameterised children {extra} besides the q/k/v and proj Linears "
                                        "(e.g. talking heads or norms); register a HeadLayout for this class")
    slices = tuple(s for n, r in producers for s in _linear_slices(n, r, "row")) + _linear_slices("proj", 1, "column")
    attrs = tuple(a for a in _GENERIC_WIDTH_ATTRS if isinstance(m.__dict__.get(a), int))
    return HeadLayout(slices, width_attrs=attrs)


def _verify_generic(m: nn.Module, layout: HeadLayout) -> None:
    """Prune head 0 of a randomised copy; it must equal the copy with head 0's proj columns zeroed."""
    cls = type(m).__qualname__
    if m.num_heads < 2:
        return  # a single head is never pruned (min_width >= 1), so its layout is never used
    probe = copy.deepcopy(m).eval().to(device="cpu", dtype=torch.float64)  # float64: a clear-cut comparison
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / math.sqrt(fan_in))
    first = _tensor(probe, layout.slices[0].path)
    x = torch.randn(2, 5, first.shape[1], generator=gen, dtype=first.dtype)
    masked = copy.deepcopy(probe)
    hd = _head_dim(probe, layout)
    with torch.no_grad():
        for s in layout.slices:
            t = _tensor(masked, s.path)
            if s.role == "column" and t is not None:
                t.narrow(s.dim, 0, hd).zero_()
    try:
        with torch.no_grad():
            expected = masked(x)
    except Exception as e:  # noqa: BLE001 - any failure means: cannot verify
        raise UnsupportedAttentionError(f"{cls}: cannot verify its head layout, forward(x) on a {tuple(x.shape)} input "
                                        f"raised {type(e).__name__}: {e}") from None
    _slice_heads(probe, layout, [0])
    try:
        with torch.no_grad():
            got = probe(x)
    except Exception as e:  # noqa: BLE001
        raise UnsupportedAttentionError(
            f"{cls}: its forward fails once a head is removed ({type(e).__name__}: {e}); it probably reshapes with "
            "the input width or derives head_dim from it; register a HeadLayout with a forward_cls") from None
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
            got, expected, rtol=1e-9, atol=1e-9):
        raise UnsupportedAttentionError(
            f"{cls}: removing head 0 as [q heads | k heads | v heads] rows and proj columns does not give the masked "
            "output, so its q/k/v layout is different (e.g. interleaved per head); register a HeadLayout")


# -------------------------------------------------------------------------------------------------------- detection

def _declares_num_heads(m: nn.Module) -> bool:
    return isinstance(m.__dict__.get("num_heads"), int) and not isinstance(m, BaseLayerWrapper)


def _resolve(m: nn.Module) -> HeadLayout:
    fn = HEAD_LAYOUTS.find(type(m))
    if fn is not None:
        layout = fn(m)
    else:
        layout = _generic_layout(m)
    _check_shapes(m, layout)
    if fn is None:
        _verify_generic(m, layout)
    return layout


def head_layout(module: nn.Module) -> HeadLayout:
    """The :class:`HeadLayout` of one attention module; raises :class:`UnsupportedAttentionError` with the reason."""
    if not _declares_num_heads(module):
        raise UnsupportedAttentionError(f"{type(module).__qualname__} has no integer 'num_heads' attribute")
    return _resolve(module)


_PROJECTION_NAMES = ("qkv", "q", "k", "v", "kv", "proj")


def _is_container(m: nn.Module) -> bool:
    """A block that only stores ``num_heads`` for an attention inside it (DaViT's ``SpatialBlock``)."""
    has_projection = any(n in _PROJECTION_NAMES for n, _ in m.named_children())
    return not has_projection and any(_declares_num_heads(c) for c in list(m.modules())[1:])


def _scan(model: nn.Module) -> tuple[dict[str, tuple[nn.Module, HeadLayout]], dict[str, str]]:
    ok, refused = {}, {}
    for name, m in model.named_modules():
        if not _declares_num_heads(m) or _is_container(m):
            continue
        try:
            ok[name] = (m, _resolve(m))
        except UnsupportedAttentionError as e:
            refused[name] = str(e)
    return ok, refused


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every attention module of ``model`` whose heads can be pruned (see the module docstring for
    the rule: an integer ``num_heads`` plus a registered or verified q/k/v + proj layout), in model order."""
    return {name: m for name, (m, _) in _scan(model)[0].items()}


# ----------------------------------------------------------------------------------------------------- tensor slicing

def _owner(m: nn.Module, path: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = path.rpartition(".")
    return (m.get_submodule(mod_name) if mod_name else m), attr


def _tensor(m: nn.Module, path: str) -> torch.Tensor | None:
    try:
        owner, attr = _owner(m, path)
    except AttributeError:
        return None
    t = getattr(owner, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def _present(m: nn.Module, layout: HeadLayout) -> list[tuple[HeadSlice, torch.Tensor]]:
    return [(s, t) for s in layout.slices if (t := _tensor(m, s.path)) is not None]


def _head_dim(m: nn.Module, layout: HeadLayout) -> int:
    s, t = _present(m, layout)[0]
    return t.shape[s.dim] // (s.repeats * m.num_heads)


def _check_shapes(m: nn.Module, layout: HeadLayout) -> None:
    cls, heads = type(m).__qualname__, m.num_heads
    present = _present(m, layout)
    if not any(s.role == "row" for s, _ in present) or not any(s.role == "column" for s, _ in present):
        raise UnsupportedAttentionError(f"{cls}: its layout has no q/k/v rows or no proj columns")
    hd = _head_dim(m, layout)
    for s, t in present:
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
    owner, attr = _owner(m, path)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    else:
        owner._buffers[attr] = new.contiguous()


def _sync_metadata(m: nn.Module, layout: HeadLayout) -> None:
    """Shape attributes of the sliced sub-layers (Linear features, LayerNorm normalized_shape)."""
    owners = {_owner(m, s.path)[0] for s in layout.slices if _tensor(m, s.path) is not None}
    for o in owners:
        if isinstance(o, nn.Linear):
            o.out_features, o.in_features = o.weight.shape
        elif isinstance(o, nn.LayerNorm) and o.weight is not None:
            o.normalized_shape = (o.weight.shape[0],)


def _switch_forward(m: nn.Module, layout: HeadLayout) -> None:
    if layout.forward_cls is not None and type(m) is not layout.forward_cls:
        m.__class__ = layout.forward_cls


@torch.no_grad()
def _slice_heads(m: nn.Module, layout: HeadLayout, drop: Sequence[int]) -> None:
    heads = m.num_heads
    hd = _head_dim(m, layout)
    keep = [h for h in range(heads) if h not in set(drop)]
    for s, t in _present(m, layout):
        block = t.shape[s.dim] // (s.repeats * heads)
        idx = _block_index(t.shape[s.dim], s.repeats, heads, keep, block).to(t.device)
        _replace(m, s.path, t.index_select(s.dim, idx))
    _sync_metadata(m, layout)
    m.num_heads = len(keep)
    for a in layout.count_attrs:
        setattr(m, a, len(keep))
    for a in layout.width_attrs:
        setattr(m, a, len(keep) * hd)
    _switch_forward(m, layout)


@torch.no_grad()
def _slice_head_dims(m: nn.Module, layout: HeadLayout, drop: Sequence[int]) -> None:
    heads = m.num_heads
    hd = _head_dim(m, layout)
    keep = [d for d in range(hd) if d not in set(drop)]
    q_path, q_block = layout.query
    for s, t in _present(m, layout):
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
        setattr(m, a, heads * len(keep))
    m.scale = len(keep) ** -0.5
    _switch_forward(m, layout)


# ------------------------------------------------------------------------------------------------------------ groups

class _AttentionGroup:
    """Shared machinery of :class:`HeadGroup` and :class:`HeadDimGroup` (one attention module, live shapes)."""

    kind: str = ""
    _suffix: str = ""

    def __init__(self, module_name: str, module: nn.Module, layout: HeadLayout, policy: Policy):
        self.module_name = module_name
        self.module = module
        self.layout = layout
        self.policy = policy

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self._suffix}" if self.module_name else self._suffix

    @property
    def num_heads(self) -> int:
        return self.module.num_heads

    @property
    def head_dim(self) -> int:
        return _head_dim(self.module, self.layout)

    @property
    def width(self) -> int:
        raise NotImplementedError

    @property
    def root(self) -> nn.Linear:
        """The first producer Linear (``qkv``, or ``q``), for code that asks a group for its device."""
        s = next(s for s in self.layout.slices if s.role == "row")
        return _owner(self.module, s.path)[0]

    @property
    def modules(self) -> list[nn.Module]:
        """The attention module and every sub-layer whose tensors are sliced (qkv, proj, ...)."""
        out = [self.module]
        for s, _ in _present(self.module, self.layout):
            o = _owner(self.module, s.path)[0]
            if all(o is not x for x in out):
                out.append(o)
        return out

    def _units(self, t: torch.Tensor, s: HeadSlice) -> torch.Tensor:
        raise NotImplementedError

    def _views(self, role: str) -> list[torch.Tensor]:
        return [self._units(t, s) for s, t in _present(self.module, self.layout) if s.role == role]

    def rows(self) -> list[torch.Tensor]:
        """``(width, k)`` views of the producers' weights: row j holds every weight that computes unit j."""
        return self._views("row")

    def columns(self) -> list[torch.Tensor]:
        """``(width, k)`` views of the consumers' weights: row j holds every weight that reads unit j."""
        return self._views("column")

    @property
    def fan(self) -> int:
        """Weights per unit in the producers (``3 * head_dim * C`` per head of a fused qkv)."""
        return sum(r.shape[1] for r in self.rows())

    def unit_params(self) -> int:
        """Parameters removed with each unit (weights, biases and per-head tables), for parameter budgets."""
        params = {id(p) for p in self.module.parameters()}
        return sum(self._units(t, s).shape[1] for s, t in _present(self.module, self.layout)
                   if id(t) in params and (s.within_head or self.kind == "head"))

    def _check(self, idxs: Sequence[int]) -> list[int]:
        idxs = sorted({int(i) for i in idxs})
        if idxs and (idxs[0] < 0 or idxs[-1] >= self.width):
            raise IndexError(f"group {self.name}: indices must lie in [0, {self.width}), got {idxs}")
        if idxs and self.width - len(idxs) < self.policy.min_width:
            raise PrunekitError(f"group {self.name}: removing {len(idxs)} of {self.width} would leave fewer than "
                                f"policy.min_width={self.policy.min_width}; allowed: at most "
                                f"{self.width - self.policy.min_width}")
        return idxs

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.path}:{s.role}" for s, _ in _present(self.module, self.layout))
        return (f"{type(self).__name__}({self.name!r}, n={self.width}, heads={self.num_heads}, "
                f"head_dim={self.head_dim}, m={self.fan}, [{parts}])")


class HeadGroup(_AttentionGroup):
    """The heads of one attention module as a prunable group of ``width = num_heads`` units.

    ``rows()`` gives, per head, its q, k and v rows (flattened, every producer of the layout); ``columns()`` the proj
    input columns reading it; ``prune(idxs)`` slices them, the per-head tables, and updates ``num_heads``. Parameters
    are replaced by smaller ones (rebuild the optimizer); ``requires_grad`` flags are kept. See the module docstring
    for the worked ViT-Ti example.

    Attributes:
        name: ``'<attention module>.heads'``, e.g. ``'blocks.3.attn.heads'``.
        kind: ``'head'``.
        policy: :class:`~prunekit.core.policy.Policy` (``min_width`` heads are always kept).
        module: the attention module; layout: its :class:`HeadLayout`.
    """

    kind = "head"
    _suffix = "heads"

    @property
    def width(self) -> int:
        """Current number of heads."""
        return self.module.num_heads

    def _units(self, t: torch.Tensor, s: HeadSlice) -> torch.Tensor:
        # (.., [repeats x H x block] along dim, ..) -> (H, repeats * block * rest)
        heads = self.module.num_heads
        return t.movedim(s.dim, 0).reshape(s.repeats, heads, -1).transpose(0, 1).reshape(heads, -1)

    def prune(self, idxs: Sequence[int]) -> None:
        """Physically remove heads ``idxs`` (in ``0..width-1``); at least ``policy.min_width`` heads remain."""
        idxs = self._check(idxs)
        if idxs:
            _slice_heads(self.module, self.layout, idxs)


class HeadDimGroup(_AttentionGroup):
    """Dimension d of every head of one attention module, as a group of ``width = head_dim`` units.

    Unit d is q, k and v row d of each head and the proj columns reading v's dimension d; removing it keeps every
    head and the output width, updates ``head_dim`` / ``attn_dim`` and folds the temperature change into q (module
    docstring). Per-head tables (Swin's bias table) are not touched. Example: ViT-Ti (H=3, hd=64) pruned by 16 dims
    has qkv = Linear(192, 3*3*48) and proj = Linear(144, 192).

    Attributes:
        name: ``'<attention module>.head_dim'``; kind: ``'head_dim'``; policy: :class:`~prunekit.core.policy.Policy`.
    """

    kind = "head_dim"
    _suffix = "head_dim"

    @property
    def width(self) -> int:
        """Current head_dim."""
        return self.head_dim

    def _units(self, t: torch.Tensor, s: HeadSlice) -> torch.Tensor:
        # (.., [repeats x H x hd] along dim, ..) -> (hd, repeats * H * rest)
        heads, hd = self.module.num_heads, self.head_dim
        return t.movedim(s.dim, 0).reshape(s.repeats, heads, hd, -1).permute(2, 0, 1, 3).reshape(hd, -1)

    def _views(self, role: str) -> list[torch.Tensor]:
        return [self._units(t, s) for s, t in _present(self.module, self.layout) if s.role == role and s.within_head]

    def prune(self, idxs: Sequence[int]) -> None:
        """Physically remove dimensions ``idxs`` (in ``0..head_dim-1``) from every head."""
        idxs = self._check(idxs)
        if idxs:
            _slice_head_dims(self.module, self.layout, idxs)


def _ignored(ignore: Iterable[str | nn.Module] | None) -> Callable[[str, nn.Module], bool]:
    items = list(ignore or ())
    patterns = [i for i in items if isinstance(i, str)]
    modules = {id(i) for i in items if isinstance(i, nn.Module)}
    bad = [i for i in items if not isinstance(i, (str, nn.Module))]
    if bad:
        raise PrunekitError(f"ignore: expected module names, glob patterns or modules, got {bad[:3]}")
    return lambda name, m: id(m) in modules or any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _groups(model: nn.Module, ignore, min_width: int, field_name: str) -> list[tuple[str, nn.Module, HeadLayout]]:
    if not isinstance(min_width, int) or min_width < 1:
        raise PrunekitError(f"{field_name}: expected an integer >= 1 (an attention keeps at least one unit), "
                            f"got {min_width!r}")
    skip = _ignored(ignore)
    ok, refused = _scan(model)
    refused = {n: r for n, r in refused.items() if not skip(n, model.get_submodule(n))}
    if refused:
        lines = "; ".join(f"{n}: {r}" for n, r in list(refused.items())[:4])
        more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
        raise UnsupportedAttentionError(
            f"{len(refused)} attention module(s) of {type(model).__name__} cannot have heads pruned: {lines}{more}; "
            f"pass their names in ignore= to prune the others")
    return [(n, m, lay) for n, (m, lay) in ok.items() if not skip(n, m)]


def head_groups(model: nn.Module, *, ignore: Iterable[str | nn.Module] | None = None,
                min_heads: int = 1) -> list[HeadGroup]:
    """One :class:`HeadGroup` per attention module of ``model``, in model order; nothing is modified.

    Args:
        model: any model; every module with an integer ``num_heads`` must be handled or ignored.
        ignore: attention modules to leave alone: names, ``fnmatch`` patterns (``'layers.0.*'``) or modules.
        min_heads: heads every module keeps (``policy.min_width``).

    Raises:
        UnsupportedAttentionError: a module with ``num_heads`` whose layout is unknown or fails verification (all of
            them are named), raised before any group is returned.
    """
    return [HeadGroup(n, m, lay, Policy(min_width=min_heads))
            for n, m, lay in _groups(model, ignore, min_heads, "min_heads")]


def head_dim_groups(model: nn.Module, *, ignore: Iterable[str | nn.Module] | None = None,
                    min_dim: int = 1) -> list[HeadDimGroup]:
    """One :class:`HeadDimGroup` per attention module that supports head-dim pruning (a registered layout with a
    ``query``: timm Attention without q/k norms, Swin, PVT-v2); refusals as in :func:`head_groups`."""
    return [HeadDimGroup(n, m, lay, Policy(min_width=min_dim))
            for n, m, lay in _groups(model, ignore, min_dim, "min_dim") if lay.query is not None]
