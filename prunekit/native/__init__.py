"""Pruned models that reload without prunekit: with timm's constructor or transformers' ``from_pretrained``.

::

    plan = pk.prune(model, x, ratio=0.3, uniform=True)      # repeated blocks keep one width
    kwargs = pk.architecture_kwargs(model)                  # timm: create_model(name, **kwargs) rebuilds it
    pk.check_native(hf_model)                               # transformers: the config describes every layer
    hf_model.save_pretrained("out/")                        # AutoModel...from_pretrained("out/") in any process

A model whose widths its library's constructor or config cannot describe (not uniform, or a width the constructor
derives, such as timm ViT's ``head_dim = embed_dim // num_heads``) raises :class:`NotNativeError` saying which layer
and why; such a model reloads with :func:`~prunekit.load_pruned` or as an export (:func:`~prunekit.export`).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .check import NotNativeError, compare_shapes
from .hf_models import check_native, is_transformers_model
from .timm_models import TIMM_BUILDERS, architecture_kwargs, is_timm_model

__all__ = ["NotNativeError", "architecture_kwargs", "check_native", "native_reload", "TIMM_BUILDERS",
           "compare_shapes"]


def native_reload(model: nn.Module) -> dict[str, Any]:
    """How ``model`` reloads without prunekit, as JSON: ``{'library': 'timm', 'name', 'kwargs'}`` or
    ``{'library': 'transformers', 'class'}`` (its ``save_pretrained`` directory loads with ``from_pretrained``);
    raises :class:`NotNativeError` when it cannot."""
    if is_transformers_model(model):
        check_native(model)
        return {"library": "transformers", "class": type(model).__name__}
    if is_timm_model(model):
        name = model.pretrained_cfg["architecture"]
        return {"library": "timm", "name": name, "kwargs": architecture_kwargs(model)}
    raise NotNativeError(f"{type(model).__name__} is neither a timm model nor a transformers PreTrainedModel: "
                         f"reload it with prunekit.load_pruned or export it (prunekit.export)")
