"""timm: the constructor arguments that rebuild a pruned model, ``timm.create_model(name, **kwargs)``.

timm's constructors take a few widths and derive the rest, so a pruned model is expressible only when its widths
follow the same rules (uniform pruning with timm's constructor ties does that: :mod:`prunekit.groups.ties`):

=============================== =========================================================================
family (class)                  arguments written; what must hold
=============================== =========================================================================
ViT, DeiT (VisionTransformer)   ``embed_dim``, ``num_heads``, ``mlp_ratio``, ``depth`` (+ ``img_size``,
                                ``patch_size``, ``in_chans``); every block alike, ``num_heads x head_dim
                                == embed_dim`` (timm derives ``head_dim = embed_dim // num_heads``)
ConvNeXt                        ``dims``, ``depths`` (+ ``in_chans``); every MLP ``4 x`` its stage's width
Swin (SwinTransformer)          ``embed_dim``, ``num_heads`` per stage, ``head_dim``, ``mlp_ratio``,
                                ``depths`` (+ ``img_size``, ``patch_size``, ``window_size``, ``in_chans``);
                                stage widths ``embed_dim x 2^i``, one MLP ratio for all stages
=============================== =========================================================================

Other families (ResNet, EfficientNet, MobileNet ...) build their widths from per-stage rules that channel pruning
does not follow; they reload with :func:`~prunekit.load_pruned` or an export. Whatever the family, the kwargs are
checked: ``create_model(name, **kwargs)`` is built on the meta device and every tensor's shape compared, and a
difference raises :class:`~prunekit.native.NotNativeError` naming it. Besides the widths, the kwargs carry what the
model was built with that shapes do not show (``global_pool``, ``dynamic_img_size``); training-only arguments (drop
rates) are not recorded.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .check import NotNativeError, compare_shapes

__all__ = ["architecture_kwargs", "is_timm_model", "TIMM_BUILDERS"]


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and isinstance(getattr(model, "pretrained_cfg", None), dict)


def _one(values: list, what: str, hint: str = "prune with uniform=True") -> Any:
    distinct = sorted(set(values), key=str)
    if len(distinct) != 1:
        raise NotNativeError(f"{what} differ between blocks ({distinct[:6]}); timm's constructor takes one: {hint}, "
                             f"or reload with prunekit.load_pruned / an export")
    return distinct[0]


def _ratio(hidden: int, dim: int) -> float:
    """``mlp_ratio`` with ``int(dim * mlp_ratio) == hidden`` (timm's Mlp), as short as it can be."""
    r = hidden / dim
    return r if int(dim * r) == hidden else (hidden + 0.5) / dim


def _width(layer: nn.Module) -> int:
    return int(layer.weight.shape[0])


def _vit(model: nn.Module) -> dict[str, Any]:
    dim = model.patch_embed.proj.out_channels
    blocks = list(model.blocks)
    heads = _one([b.attn.num_heads for b in blocks], "heads per attention")
    head_dim = _one([b.attn.head_dim for b in blocks], "head sizes")
    hidden = _one([_width(b.mlp.fc1) for b in blocks], "MLP widths")
    if heads * head_dim != dim:
        raise NotNativeError(
            f"attention is {heads} heads of {head_dim} ({heads * head_dim} wide) but embed_dim is {dim}; timm's "
            f"VisionTransformer derives head_dim = embed_dim // num_heads, so it cannot build this: prune with "
            f"uniform=True and the residual stream (patch_embed.proj) not ignored, so a head goes with {head_dim} of "
            f"its channels, or with heads=False; or reload with prunekit.load_pruned / an export")
    pe = model.patch_embed
    return {"embed_dim": dim, "depth": len(blocks), "num_heads": heads, "mlp_ratio": _ratio(hidden, dim),
            "img_size": list(pe.img_size) if pe.img_size is not None else None, "patch_size": list(pe.patch_size),
            "in_chans": pe.proj.in_channels, "global_pool": model.global_pool,
            "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False))}


def _convnext(model: nn.Module) -> dict[str, Any]:
    dims, depths = [], []
    for s, stage in enumerate(model.stages):
        blocks = list(stage.blocks)
        dim = _one([b.conv_dw.out_channels for b in blocks], f"stage {s} widths")
        hidden = _one([_width(b.mlp.fc1) for b in blocks], f"stage {s} MLP widths")
        if hidden != 4 * dim:
            raise NotNativeError(f"stage {s}'s MLPs are {hidden} wide with a stage width of {dim}; timm's ConvNeXt "
                                 f"builds every MLP 4 x its stage's width (dims): prune with uniform=True, or reload "
                                 f"with prunekit.load_pruned / an export")
        dims.append(dim)
        depths.append(len(blocks))
    return {"dims": dims, "depths": depths, "in_chans": model.stem[0].in_channels,
            "global_pool": model.head.global_pool.pool_type}


def _swin(model: nn.Module) -> dict[str, Any]:
    dims, depths, heads, head_dims, ratios = [], [], [], [], []
    for s, layer in enumerate(model.layers):
        blocks = list(layer.blocks)
        dims.append(_one([b.norm1.normalized_shape[0] for b in blocks], f"stage {s} widths"))
        heads.append(_one([b.attn.num_heads for b in blocks], f"stage {s} heads"))
        head_dims.append(_one([b.attn.qkv.out_features // (3 * b.attn.num_heads) for b in blocks],
                              f"stage {s} head sizes"))
        hidden = _one([_width(b.mlp.fc1) for b in blocks], f"stage {s} MLP widths")
        ratios.append(hidden / dims[-1])
        depths.append(len(blocks))
    if any(d != dims[0] * 2 ** i for i, d in enumerate(dims)):
        raise NotNativeError(f"stage widths {dims}: timm's SwinTransformer builds embed_dim x 2^i; reload with "
                             f"prunekit.load_pruned / an export")
    _one(ratios, "MLP ratios of the stages", "prune with uniform=True (Swin's MLPs are tied across stages)")
    head_dim = _one(head_dims, "head sizes of the stages")
    pe = model.patch_embed
    first = model.layers[0].blocks[0]
    return {"embed_dim": dims[0], "depths": depths, "num_heads": heads, "head_dim": head_dim,
            "mlp_ratio": _ratio(_width(first.mlp.fc1), dims[0]), "img_size": list(pe.img_size),
            "patch_size": list(pe.patch_size)[0], "window_size": list(first.window_size),
            "in_chans": pe.proj.in_channels, "global_pool": model.global_pool}


def _builders() -> dict[type, Callable[[nn.Module], dict[str, Any]]]:
    from timm.models.convnext import ConvNeXt
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    return {VisionTransformer: _vit, ConvNeXt: _convnext, SwinTransformer: _swin}


TIMM_BUILDERS = ("VisionTransformer (ViT, DeiT)", "ConvNeXt", "SwinTransformer")


def architecture_kwargs(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``timm.create_model(name, **kwargs)`` that build ``model``'s (pruned) architecture, so
    ``load_state_dict(strict=True)`` of its weights restores it without prunekit.

    Args:
        model: a timm model, pruned or not.
        name: the timm model name it was created with; default ``model.pretrained_cfg['architecture']``.

    Raises:
        NotNativeError: the family has no rule here, or its widths break the constructor's rules (which one, and
            what to do), or the built model differs in any tensor's shape.
    """
    import timm

    if not is_timm_model(model):
        raise NotNativeError(f"{type(model).__name__} is not a timm model (no pretrained_cfg)")
    name = name or model.pretrained_cfg.get("architecture")
    builder = next((fn for cls, fn in _builders().items() if isinstance(model, cls)), None)
    if builder is None:
        raise NotNativeError(f"timm's {type(model).__name__} builds its widths by rules prunekit does not write as "
                             f"arguments (written: {', '.join(TIMM_BUILDERS)}); reload it with prunekit.load_pruned "
                             f"or an export")
    kwargs = {k: v for k, v in builder(model).items() if v is not None}
    kwargs["num_classes"] = model.num_classes
    try:
        with torch.device("meta"):
            built = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the constructor says, it cannot build this model
        raise NotNativeError(f"timm.create_model({name!r}, **{kwargs}) fails ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); reload with prunekit.load_pruned or an export"
                             ) from None
    compare_shapes(model.state_dict(), built.state_dict(), f"timm.create_model({name!r}, **kwargs)")
    return kwargs
