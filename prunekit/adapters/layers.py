"""Bottleneck adapters for vision transformers, injected by wrapping a sub-layer.

Series adapters (Houlsby et al., 2019), applied to the output of a sub-layer as in TINA (Fig. 2a)::

    h' = W_up phi(W_down h) + h                    # h = sublayer(x, ...)

Parallel adapters (He et al., 2021; TINA appendix A.3.2), a branch on the sub-layer's input::

    h' = sublayer(x, ...) + s * W_up phi(W_down x)

``W_up`` (and its bias) start at zero, so an injected model computes exactly what the backbone computes. The hidden
size n_i is either fixed or follows a compression rate sigma: ``n_i = round(m_i / sigma)``, at least 1.

The wrapper keeps the sub-layer under ``base_layer`` and maps a backbone checkpoint's keys on load
(``blocks.0.attn.qkv.weight`` -> ``blocks.0.attn.base_layer.qkv.weight``), so a plain timm checkpoint still loads into
an injected model with ``load_state_dict(sd, strict=False)`` (only the adapter keys are then missing).

An adapter pruned to zero neurons is removed: its wrapper is replaced by the bare sub-layer, which is exactly the
identity adapter at zero parameters and zero runtime cost (:func:`remove_empty_adapters`).

Injection (which sub-layers, which layout) is :mod:`prunekit.adapters.inject`; the groups the pruning
core sees are :mod:`prunekit.adapters.groups`.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import nn

from ..registry import PrunekitError, did_you_mean
from ..core.wrapper import BaseLayerWrapper

__all__ = ["Adapter", "AdapterLayer", "SeriesAdapterLayer", "ParallelAdapterLayer", "NoMatchingModuleError",
           "AdapterLayoutError", "Conv1x1", "hidden_size"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


class NoMatchingModuleError(PrunekitError, ValueError):
    """No module of the model matches the requested target patterns."""


class AdapterLayoutError(PrunekitError, ValueError):
    """A target sub-layer whose output layout cannot carry an adapter (the message names it and its layout)."""


Layout = Literal["channels_last", "channels_first"]


class Conv1x1(nn.Conv2d):
    """The channels-first counterpart of ``nn.Linear(in_channels, out_channels)``: a 1x1 ``Conv2d`` on
    ``(B, C, H, W)`` that, like ``nn.Linear``, also runs with zero input or output channels (``F.conv2d`` refuses
    them), so an adapter pruned to zero neurons still computes ``x + up.bias`` until it is removed."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels and self.out_channels:
            return super().forward(x)
        B, _, H, W = x.shape
        if self.bias is None:
            return x.new_zeros(B, self.out_channels, H, W)
        return self.bias.view(1, -1, 1, 1).expand(B, -1, H, W)


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if hasattr(layer, "in_features") else layer.in_channels


def _out_width(layer: nn.Module) -> int:
    return layer.out_features if hasattr(layer, "out_features") else layer.out_channels


def hidden_size(dim: int, sigma: float | None = None, hidden: int | None = None) -> int:
    """Hidden width of an adapter on a ``dim``-wide sub-layer: fixed ``hidden``, or ``round(dim / sigma)`` (>= 1)."""
    if (sigma is None) == (hidden is None):
        raise ValueError(f"give exactly one of sigma and hidden, got sigma={sigma!r}, hidden={hidden!r}")
    if hidden is not None:
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        return int(hidden)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return max(1, math.floor(dim / sigma + 0.5))


class Adapter(nn.Module):
    """Bottleneck ``up(act(down(x)))``, plus ``x`` when ``residual`` (series), times ``scale`` otherwise (parallel).

    ``x`` is channels-last ``(..., m)`` with Linear down / up, or channels-first ``(B, m, H, W)`` with 1x1 convs
    (``linear_layer=Conv1x1``).

    Args:
        dim: input and output width m.
        hidden: bottleneck width n.
        act_layer: activation phi, a module type or a name (``gelu``, ``relu``, ``silu``, ``tanh``, ``identity``).
        bias: whether down and up have biases.
        residual: add the input to the output (Houlsby series adapter).
        scale: factor on the bottleneck's output (AdaptFormer's s; 1 for plain adapters).
        linear_layer: ``fn(in_features, out_features, bias=...)`` for down and up (PHM layers for Compacter,
            :class:`Conv1x1` for channels-first inputs).
    """

    def __init__(
            self,
            dim: int,
            hidden: int,
            act_layer: type[nn.Module] | str = "gelu",
            bias: bool = True,
            residual: bool = True,
            scale: float = 1.0,
            linear_layer: Callable[..., nn.Module] = nn.Linear,
    ):
        super().__init__()
        if isinstance(act_layer, str):
            if act_layer not in _ACTIVATIONS:
                raise ValueError(
                    f"act_layer: unknown activation {act_layer!r};{did_you_mean(act_layer, list(_ACTIVATIONS))} "
                    f"allowed: {', '.join(_ACTIVATIONS)}")
            act_layer = _ACTIVATIONS[act_layer]
        self.down = linear_layer(dim, hidden, bias=bias)
        self.act = act_layer()
        self.up = linear_layer(hidden, dim, bias=bias)
        self.residual = residual
        self.scale = scale
        zero_init = getattr(self.up, "zero_init_", None)  # layers other than nn.Linear say how to output zero
        if zero_init is not None:
            zero_init()
        else:
            nn.init.zeros_(self.up.weight)
            if self.up.bias is not None:
                nn.init.zeros_(self.up.bias)

    @property
    def dim(self) -> int:
        return _in_width(self.down)

    @property
    def hidden(self) -> int:
        return _out_width(self.down)

    @property
    def layout(self) -> Layout:
        return "channels_first" if isinstance(self.down, nn.Conv2d) else "channels_last"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.up(self.act(self.down(x)))  # (..., m) or (B, m, H, W)
        if self.scale != 1.0:
            r = r * self.scale
        return x + r if self.residual else r

    def extra_repr(self) -> str:
        return f"residual={self.residual}, scale={self.scale}, layout={self.layout}"


class AdapterLayer(BaseLayerWrapper):
    """Wraps a sub-layer and an adapter (see :class:`~prunekit.core.wrapper.BaseLayerWrapper` for attribute
    forwarding and checkpoint-key mapping)."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter):
        super().__init__(base_layer)
        self.adapter = adapter


class SeriesAdapterLayer(AdapterLayer):
    """``adapter(sublayer(x, ...))`` with a residual adapter."""

    def forward(self, *args, **kwargs):
        return self.adapter(self.base_layer(*args, **kwargs))


class ParallelAdapterLayer(AdapterLayer):
    """``sublayer(x, ...) + adapter(x)`` with a non-residual adapter on the sub-layer's first input."""

    def forward(self, x, *args, **kwargs):
        return self.base_layer(x, *args, **kwargs) + self.adapter(x)
