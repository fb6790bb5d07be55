"""Where an attention module keeps each head: :class:`HeadLayout` (the tensors a head owns, the attributes that
count heads), the registry of layouts by class and the built-in ones (timm ``Attention`` / ``AttentionRope``, Swin
``WindowAttention``, PVT-v2 ``Attention``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention as TimmAttention
from timm.layers.attention import AttentionRope as TimmAttentionRope
from timm.models import pvt_v2, swin_transformer
from torch import nn

from ...registry import PrunekitError, TypeRegistry


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

    A *unit* is what a head group removes at once: one head, or, with grouped-query attention, one key/value head
    together with the query heads that read it (every slice then holds ``units`` equal blocks along its ``dim``).

    Attributes:
        slices: every tensor sliced when a head goes (missing optional tensors such as a ``None`` bias are skipped).
            Paths may reach into children (``'self.query.weight'``, ``'output.dense.weight'``).
        width_attrs: integer attributes equal to ``num_heads * head_dim`` that the forward reads (timm's ``attn_dim``;
            dotted paths allowed, ``'self.all_head_size'``).
        count_attrs: integer attributes equal to ``num_heads`` besides it (``num_kv_heads`` without grouped queries).
        heads_attr: the attribute holding the unit count (default ``num_heads``; dotted paths allowed), or None when
            the forward infers it from the shapes; then ``count`` computes it.
        count: ``fn(module) -> units`` when ``heads_attr`` is None (a decoder's ``k_proj`` rows / ``head_dim``).
        on_resize: ``fn(module)`` after a slice, for attributes derived otherwise (GPT-2's ``split_size``).
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
    heads_attr: str | None = "num_heads"
    count: Callable[[nn.Module], int] | None = None
    on_resize: Callable[[nn.Module], None] | None = None


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

def linear_slices(name: str, repeats: int, role: Literal["row", "column"]) -> tuple[HeadSlice, ...]:
    if role == "row":
        return HeadSlice(f"{name}.weight", 0, repeats, "row"), HeadSlice(f"{name}.bias", 0, repeats)
    return (HeadSlice(f"{name}.weight", 1, repeats, "column"),)


def _is_identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _timm_attention_layout(m: nn.Module) -> HeadLayout:
    slices = linear_slices("qkv", 3, "row") + linear_slices("proj", 1, "column")
    if getattr(m, "gate", None) is not None:  # gated attention: one sigmoid gate per attention channel
        slices += linear_slices("gate", 1, "row")
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
        slices = linear_slices("qkv", 3, "row")
    else:
        slices = sum((linear_slices(n, 1, "row") for n in ("q_proj", "k_proj", "v_proj")), ())
    slices += linear_slices("proj", 1, "column")
    if getattr(m, "gate", None) is not None:
        slices += linear_slices("gate", 1, "row")
    if not _is_identity(m.norm):
        slices += (HeadSlice("norm.weight", 0), HeadSlice("norm.bias", 0))
    # rotary embeddings rotate pairs of dimensions within a head, so head-dim pruning is not offered (query=None)
    return HeadLayout(slices, width_attrs=("attn_dim", "kv_dim"), count_attrs=("num_kv_heads",))


def _swin_window_attention_layout(m: nn.Module) -> HeadLayout:
    slices = (linear_slices("qkv", 3, "row") + linear_slices("proj", 1, "column")
              + (HeadSlice("relative_position_bias_table", 1, within_head=False),))
    return HeadLayout(slices, query=("qkv", 0))


def _pvt_v2_attention_layout(m: nn.Module) -> HeadLayout:
    # q: (H*hd, C); kv: [k heads | v heads]; sr / norm act on the input (C channels) and are not per head.
    slices = linear_slices("q", 1, "row") + linear_slices("kv", 2, "row") + linear_slices("proj", 1, "column")
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
