"""Visual Prompt Tuning (Jia et al., 2022): learnable prompt tokens, shallow (first layer) or deep (every layer).

- **ViT** (timm ``VisionTransformer``): N prompts are inserted after the class / register tokens before the first
  block; deep VPT replaces them with the layer's own prompts before every block. They are dropped after the last
  block, so pooling and head see what they always saw.
- **Swin** (timm ``SwinTransformer``): tokens live in windows, so, as VPT does for Swin, the prompts are prepended
  to the tokens of *every window* inside the attention of a block (no relative-position bias and no shift mask for
  them) and dropped after it. Shallow VPT prompts the first block only; deep VPT every block, each stage with prompts
  of its own width.

Other architectures raise a named error. The frozen backbone and the head as usual; prompts change the output from
the first step (VPT is not zero-initialised).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import option
from ..errors import ConfigError, PrunekitError
from ..models.params import mark_trainable
from ..core.wrapper import BaseLayerWrapper, set_submodule
from .base import Method, register_method


def _prompt(n: int, dim: int, patch_area: int, ref: torch.Tensor) -> nn.Parameter:
    p = nn.Parameter(torch.empty(1, n, dim, device=ref.device, dtype=ref.dtype))
    val = math.sqrt(6.0 / float(3 * patch_area + dim))  # VPT's Xavier-uniform range
    nn.init.uniform_(p, -val, val)
    return p


class PromptedBlock(BaseLayerWrapper):
    """A ViT block that inserts (first block) or replaces (deep) prompt tokens and drops them after the last block."""

    def __init__(self, block: nn.Module, prompt: nn.Parameter | None, num_prefix: int, num_tokens: int,
                 first: bool, last: bool):
        super().__init__(block)
        self.prompt = prompt
        self.num_prefix, self.num_tokens, self.first, self.last = num_prefix, num_tokens, first, last

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        k, n = self.num_prefix, self.num_tokens
        if self.prompt is not None:
            p = self.prompt.expand(x.shape[0], -1, -1)
            rest = x[:, k:] if self.first else x[:, k + n:]
            x = torch.cat([x[:, :k], p, rest], dim=1)  # (B, prefix + N + patches, C)
        x = self.base_layer(x, *args, **kwargs)
        if self.last:
            x = torch.cat([x[:, :k], x[:, k + n:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, prompt={self.prompt is not None}, first={self.first}, last={self.last}"


class PromptedWindowAttention(BaseLayerWrapper):
    """Swin window attention with N prompt tokens prepended to every window (their outputs are dropped)."""

    def __init__(self, attn: nn.Module, prompt: nn.Parameter):
        super().__init__(attn)
        self.prompt = prompt

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.base_layer
        B_, N, C = x.shape
        P = self.prompt.shape[1]
        x = torch.cat([self.prompt.expand(B_, -1, -1), x], dim=1)  # (B_, P + N, C)
        qkv = a.qkv(x).reshape(B_, P + N, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B_, heads, P + N, hd)
        attn = (q * a.scale) @ k.transpose(-2, -1)
        bias = torch.zeros(1, a.num_heads, P + N, P + N, device=x.device, dtype=attn.dtype)
        bias[..., P:, P:] = a._get_rel_pos_bias()
        attn = attn + bias
        if mask is not None:
            num_win = mask.shape[0]
            padded = torch.zeros(num_win, P + N, P + N, device=x.device, dtype=attn.dtype)
            padded[:, P:, P:] = mask
            attn = attn.view(-1, num_win, a.num_heads, P + N, P + N) + padded.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, a.num_heads, P + N, P + N)
        attn = a.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B_, P + N, -1)[:, P:]
        return a.proj_drop(a.proj(x))


@dataclass
class VPTConfig:
    tokens: int = field(**option("number of prompt tokens N (the paper: 10 and 100)", default=10))
    deep: bool = field(**option("prompts before every layer (deep) instead of the first only (shallow)",
                                default=False))

    def __post_init__(self):
        if self.tokens < 1:
            raise ConfigError(f"method.tokens: expected an integer >= 1, got {self.tokens}")


def _patch_area(model: nn.Module) -> int:
    ps = getattr(getattr(model, "patch_embed", None), "patch_size", (16, 16))
    ps = (ps, ps) if isinstance(ps, int) else ps
    return int(ps[0] * ps[1])


def apply(model: nn.Module, config: VPTConfig) -> None:
    from timm.models.swin_transformer import SwinTransformer, WindowAttention
    from timm.models.vision_transformer import VisionTransformer

    mark_trainable(model, adapters=False, head=True)
    area = _patch_area(model)
    if isinstance(model, VisionTransformer):
        blocks = list(model.blocks)
        ref = next(model.parameters())
        for i, block in enumerate(blocks):
            prompt = _prompt(config.tokens, model.embed_dim, area, ref) if (config.deep or i == 0) else None
            model.blocks[i] = PromptedBlock(block, prompt, model.num_prefix_tokens, config.tokens,
                                            first=i == 0, last=i == len(blocks) - 1)
        return
    if isinstance(model, SwinTransformer):
        attns = [(n, m) for n, m in model.named_modules() if isinstance(m, WindowAttention)]
        for i, (name, attn) in enumerate(attns):
            if config.deep or i == 0:
                dim = attn.qkv.in_features
                set_submodule(model, name, PromptedWindowAttention(attn, _prompt(config.tokens, dim, area,
                                                                                 attn.qkv.weight)))
        return
    raise PrunekitError(f"method vpt: supports timm VisionTransformer and SwinTransformer models, got "
                        f"{type(model).__name__}; use another method for this backbone")


VPT = register_method(Method("vpt", VPTConfig, apply, description="N learnable prompt tokens (shallow or deep) + head"))
