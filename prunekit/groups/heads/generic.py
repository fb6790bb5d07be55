"""Attention modules without a registered layout: the generic ``qkv`` / ``q, k, v`` / ``q, kv`` + ``proj`` layout, the
check that pruning one head of it equals masking that head, and which modules of a model are attention at all."""
from __future__ import annotations

import copy
import importlib
import math

import torch
from torch import nn

from ...core.wrapper import BaseLayerWrapper
from .layouts import HEAD_LAYOUTS, HeadLayout, UnsupportedAttentionError, linear_slices
from .slicing import check_shapes, head_dim_of, owner_of, present, slice_heads, tensor_at


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
    slices = tuple(s for n, r in producers for s in linear_slices(n, r, "row")) + linear_slices("proj", 1, "column")
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
    first = tensor_at(probe, layout.slices[0].path)
    x = torch.randn(2, 5, first.shape[1], generator=gen, dtype=first.dtype)
    masked = copy.deepcopy(probe)
    hd = head_dim_of(probe, layout)
    with torch.no_grad():
        for s in layout.slices:
            t = tensor_at(masked, s.path)
            if s.role == "column" and t is not None:
                t.narrow(s.dim, 0, hd).zero_()
    try:
        with torch.no_grad():
            expected = masked(x)
    except Exception as e:  # noqa: BLE001 - any failure means: cannot verify
        raise UnsupportedAttentionError(f"{cls}: cannot verify its head layout, forward(x) on a {tuple(x.shape)} input "
                                        f"raised {type(e).__name__}: {e}") from None
    slice_heads(probe, layout, [0])
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
    check_shapes(m, layout)
    if fn is None:
        _verify_generic(m, layout)
    return layout


def _registered(m: nn.Module) -> bool:
    return HEAD_LAYOUTS.find(type(m)) is not None


def _load_layouts_for(model: nn.Module) -> None:
    """Import the layouts of the libraries ``model`` is built from (Hugging Face transformers: only when the model
    holds its modules, so a timm model never imports transformers)."""
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        importlib.import_module(f"{__package__}.hf").register_model_classes(model)


def head_layout(module: nn.Module) -> HeadLayout:
    """The :class:`HeadLayout` of one attention module; raises :class:`UnsupportedAttentionError` with the reason."""
    _load_layouts_for(module)
    if _registered(module):
        return _resolve(module)
    if not _declares_num_heads(module):
        raise UnsupportedAttentionError(f"{type(module).__qualname__} has no integer 'num_heads' attribute")
    return _resolve(module)


_PROJECTION_NAMES = ("qkv", "q", "k", "v", "kv", "proj")


def _is_container(m: nn.Module) -> bool:
    """A block that only stores ``num_heads`` for an attention inside it (DaViT's ``SpatialBlock``)."""
    has_projection = any(n in _PROJECTION_NAMES for n, _ in m.named_children())
    return not has_projection and any(_declares_num_heads(c) for c in list(m.modules())[1:])


def scan(model: nn.Module) -> tuple[dict[str, tuple[nn.Module, HeadLayout]], dict[str, str]]:
    """Every attention module of ``model``: a registered class, or a module declaring ``num_heads`` that is not a
    container nor inside a registered one (``BertAttention`` is registered, its ``self`` holds the head count)."""
    _load_layouts_for(model)
    ok, refused = {}, {}
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if _registered(m):
            inside.append(name)
        elif not _declares_num_heads(m) or _is_container(m):
            continue
        try:
            ok[name] = (m, _resolve(m))
        except UnsupportedAttentionError as e:
            refused[name] = str(e)
    return ok, refused


def head_projections(model: nn.Module) -> dict[nn.Module, str]:
    """Every layer whose output channels are laid out per head (the q / k / v rows of an attention module whose layout
    resolves), with the attention module's name: channel pruning must leave them to the head groups."""
    out: dict[nn.Module, str] = {}
    for name, (m, layout) in scan(model)[0].items():
        for s in present(m, layout):
            if s[0].role == "row":
                out[owner_of(m, s[0].path)[0]] = name
    return out


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every attention module of ``model`` whose heads can be pruned (see the module docstring for
    the rule: an integer ``num_heads`` plus a registered or verified q/k/v + proj layout), in model order."""
    return {name: m for name, (m, _) in scan(model)[0].items()}
