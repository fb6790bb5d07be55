"""LoRA (Hu et al., 2021) on the query and key projections (Tables 1-2, "LoRa (Q, K)").

timm fuses q, k and v into one ``qkv`` Linear (d -> 3d). :class:`LoRAQKV` wraps it and adds low-rank updates to the
q and k thirds of its output only::

    [q | k | v] = qkv(x) + [B_q A_q x | B_k A_k x | 0] * alpha / r

``A`` starts Kaiming-uniform and ``B`` at zero (as in the paper and PEFT), so the model starts at the backbone's
output. Trainable: 2 r d per projection, 4 r d per block, plus the head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapters.inject import match_modules
from ..config import option
from ..errors import ConfigError
from ..models.params import mark_trainable
from ..core.wrapper import BaseLayerWrapper, set_submodule
from .base import Method, register_method


class LoRAQKV(BaseLayerWrapper):
    """Low-rank updates on the q and k parts of a fused qkv projection.

    Args:
        base_layer: ``nn.Linear(d, 3 d)`` producing ``[q | k | v]``.
        rank: r.
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
        parts: which thirds get an update (``'q'``, ``'k'``, ``'v'``).
    """

    PARTS = ("q", "k", "v")

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, parts: tuple[str, ...] = ("q", "k")):
        super().__init__(base_layer)
        d_in, d_out = base_layer.in_features, base_layer.out_features
        if d_out % 3:
            raise ValueError(f"LoRAQKV wraps a fused qkv projection (out = 3 x d); got out_features={d_out}")
        self.dim = d_out // 3
        self.rank, self.scaling, self.parts = rank, alpha / rank, tuple(parts)
        ref = base_layer.weight
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(rank, d_in, device=ref.device, dtype=ref.dtype))
                                        for p in self.parts})
        self.lora_B = nn.ParameterDict({p: nn.Parameter(torch.zeros(self.dim, rank, device=ref.device,
                                                                     dtype=ref.dtype)) for p in self.parts})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (..., 3d)
        chunks = list(out.split(self.dim, dim=-1))
        for i, p in enumerate(self.PARTS):
            if p in self.parts:
                chunks[i] = chunks[i] + (x @ self.lora_A[p].t() @ self.lora_B[p].t()) * self.scaling
        return torch.cat(chunks, dim=-1)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, parts={self.parts}"


@dataclass
class LoRAConfig:
    rank: int = field(**option("r, the rank of every update (the paper's Table 10 picks 8)", default=8))
    alpha: float = field(**option("scaling numerator: updates are multiplied by alpha / rank", default=16.0))
    parts: list[str] = field(**option("which of q, k, v get an update", default_factory=lambda: ["q", "k"]))
    targets: list[str] = field(**option("glob patterns of the fused qkv projections", default_factory=lambda: [
        "*blocks.*.attn.qkv", "*blocks.*.attn.base_layer.qkv"]))

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"method.rank: expected an integer >= 1, got {self.rank}")
        bad = [p for p in self.parts if p not in LoRAQKV.PARTS]
        if bad or not self.parts:
            raise ConfigError(f"method.parts: expected a non-empty list of 'q', 'k', 'v', got {self.parts}")


def apply(model: nn.Module, config: LoRAConfig) -> None:
    names = match_modules(model, config.targets)
    layers = {n: model.get_submodule(n) for n in names}
    bad = [n for n, m in layers.items() if not isinstance(m, nn.Linear) or m.out_features % 3]
    if bad:
        raise ConfigError(f"method.targets: {bad[:3]} are not fused qkv Linear layers (out = 3 x d)")
    mark_trainable(model, adapters=False, head=True)
    for name, layer in layers.items():
        set_submodule(model, name, LoRAQKV(layer, config.rank, config.alpha, tuple(config.parts)))


LORA = register_method(Method("lora", LoRAConfig, apply, description="low-rank updates of q and k (rank r) + head"))
