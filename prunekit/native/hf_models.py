"""transformers: a pruned model reloads with ``from_pretrained`` when its config describes every layer.

prunekit keeps ``model.config`` in step with the widths every layer shares (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``; :func:`~prunekit.groups.heads.hf.sync_config`), so a
uniformly pruned model's ``save_pretrained`` directory loads like any checkpoint. :func:`check_native` proves it the
way ``from_pretrained`` would: it builds ``type(model)(config)`` on the meta device (no memory, no weights) and
compares every tensor's shape. What cannot be written:

- widths that differ between layers (pruned without ``uniform=True``);
- fewer heads in an encoder whose config derives the head size: BERT-style and ViT-style configs have no
  ``head_dim`` (``attention_head_size = hidden_size // num_attention_heads``), and transformers 5 no longer stores
  pruned heads (``config.pruned_heads``); their MLP width (``intermediate_size``) reloads, so prune them with
  ``heads=False`` for ``from_pretrained``. Decoders (LLaMA, Mistral, Qwen2 ...) store ``head_dim`` and reload with
  fewer heads and key/value heads.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..groups.ties import is_transformers_model
from .check import NotNativeError, compare_shapes

__all__ = ["check_native", "is_transformers_model"]


def _encoder_heads_note(model: nn.Module) -> str:
    config = model.config
    if hasattr(config, "head_dim") or not hasattr(config, "num_attention_heads"):
        return ""
    for m in model.modules():
        size = getattr(m, "attention_head_size", None)
        heads = getattr(m, "num_attention_heads", None)
        if isinstance(size, int) and isinstance(heads, int) and heads * size != config.hidden_size:
            return (f"; {type(config).__name__} derives the head size as hidden_size / num_attention_heads "
                    f"({config.hidden_size} / {heads}), so {heads} heads of {size} cannot be written in it "
                    f"(transformers 5 stores no pruned heads): prune with heads=False for from_pretrained, or "
                    f"reload with prunekit.load_pruned / an export")
    return ""


def check_native(model: nn.Module) -> None:
    """Raise :class:`~prunekit.native.NotNativeError`, naming the first layer and why, unless
    ``type(model)(model.config)`` builds every tensor with the pruned model's shape (so ``save_pretrained`` +
    ``from_pretrained`` reload it without prunekit)."""
    if not is_transformers_model(model):
        raise NotNativeError(f"{type(model).__name__} is not a transformers PreTrainedModel")
    what = f"{type(model).__name__}(config)"
    try:
        with torch.device("meta"):
            built = type(model)(copy.deepcopy(model.config))
    except Exception as e:  # noqa: BLE001 - whatever the class says, its config cannot build this model
        raise NotNativeError(f"{what} fails ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    try:
        compare_shapes(model.state_dict(), built.state_dict(), what)
    except NotNativeError as e:
        raise NotNativeError(f"{e}{_encoder_heads_note(model)}") from None
