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
"""
from __future__ import annotations

from .generic import attention_modules, head_layout, head_projections
from .groups import HeadDimGroup, HeadGroup, head_dim_groups, head_groups
from .layouts import HEAD_LAYOUTS, HeadLayout, HeadSlice, UnsupportedAttentionError, register_head_layout

__all__ = ["HeadSlice", "HeadLayout", "HeadGroup", "HeadDimGroup", "UnsupportedAttentionError", "HEAD_LAYOUTS",
           "register_head_layout", "attention_modules", "head_layout", "head_projections", "head_groups",
           "head_dim_groups"]
