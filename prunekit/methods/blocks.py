"""Partial fine-tuning (Tables 1-2, "Att-blocks" / "MLP-blocks"): only the attention or only the MLP sub-layers
train, plus the head. Sub-layers are found by name (``*blocks.*.attn`` / ``*blocks.*.mlp`` in timm ViT and Swin)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..adapters.inject import match_modules
from ..config import option
from ..models.params import mark_trainable
from .base import Method, register_method


@dataclass
class AttnBlocksConfig:
    targets: list[str] = field(**option("glob patterns of the attention sub-layers", default_factory=lambda: [
        "*blocks.*.attn"]))


@dataclass
class MlpBlocksConfig:
    targets: list[str] = field(**option("glob patterns of the MLP sub-layers", default_factory=lambda: [
        "*blocks.*.mlp"]))


def apply(model, config) -> None:
    names = match_modules(model, config.targets)  # named error when nothing matches
    mark_trainable(model, adapters=False, head=True)
    for name in names:
        model.get_submodule(name).requires_grad_(True)


ATTN = register_method(Method("attn_blocks", AttnBlocksConfig, apply,
                              description="train the attention sub-layers + the head"))
MLP = register_method(Method("mlp_blocks", MlpBlocksConfig, apply, description="train the MLP sub-layers + the head"))
