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

**Output layouts.** A transformer sub-layer outputs channels last, ``(B, N, C)``: down and up are ``nn.Linear``. A CNN
sub-layer (a ConvNeXt block, a conv) outputs channels first, ``(B, C, H, W)``: down and up are then 1x1 convolutions,
``Conv2d(C, n, 1)`` and ``Conv2d(n, C, 1)``, the same map applied at every pixel, pruned by torch-pruning as the same
``down.out <-> up.in`` group. :func:`inject_adapters` picks the layout per target:

- with ``example_inputs``: one forward with hooks on the targets records each output's shape; the adapter is
  channels-last when the last axis has the target's width C, channels-first when a 4-D output has C on axis 1 (a tie,
  ``(B, C, H, C)``, falls back to the type rule);
- without: by module type. Every layer inside is ``nn.Linear``: channels-last. Every layer inside is ``nn.Conv2d`` and
  no timm-style ``flatten=True`` / non-NCHW ``output_fmt`` says otherwise: channels-first. Linear and conv layers
  mixed (ConvNeXt's ``conv_mlp=False`` blocks run a channels-last Linear MLP between two permutes, so the last layer
  does not tell the output layout): refused, asking for ``example_inputs``.

Anything else (a 3-D ``(B, C, L)`` conv output, a tuple, an output without a C-wide axis, a parallel adapter whose
input layout differs from the output's) raises :class:`AdapterLayoutError` naming the module and its layout, before
the model is touched.

The adapters are a client of the generic core: :func:`adapter_groups` finds one group per adapter (``down.out <->
up.in``, kind ``'adapter'``) and gives it :data:`ADAPTER_POLICY` (``min_width=0``; ``on_empty`` removes the wrapper),
so scopes, plans and the engine never need to know what an adapter is.

Over 300 lines on purpose: injection, the two layouts, the adapter groups and the removal of emptied adapters share
the ``Adapter`` class and its invariants (state-dict keys unchanged, an empty adapter is the identity).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import nn

from ..core.graph import Group, call_model, find_groups
from ..core.policy import Policy
from ..registry import PrunekitError, did_you_mean
from ..core.wrapper import BaseLayerWrapper, set_submodule

__all__ = [
    "Adapter",
    "AdapterConfig",
    "AdapterLayer",
    "SeriesAdapterLayer",
    "ParallelAdapterLayer",
    "NoMatchingModuleError",
    "AdapterLayoutError",
    "Conv1x1",
    "layout_by_type",
    "trace_shapes",
    "inject_adapters",
    "find_adapters",
    "remove_empty_adapters",
    "adapter_groups",
    "ADAPTER_POLICY",
    "hidden_size",
    "DEFAULT_TARGETS",
]

# timm ViT (``blocks.3.attn``), Swin (``layers.1.blocks.0.mlp``), DeiT, BEiT, EVA ... all name their sub-layers so.
DEFAULT_TARGETS = ("*blocks.*.attn", "*blocks.*.mlp")

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


@dataclass
class AdapterConfig:
    """Where adapters go and how big they are.

    Exactly one of ``sigma`` and ``hidden`` is set. ``targets`` are glob patterns on module names
    (``fnmatch``; ``*`` also matches dots), or exact names.
    """

    sigma: float | None = 32.0  # compression rate m_i / n_i; TINA starts from 32 (Sec. 4)
    hidden: int | None = None  # a fixed n_i for every adapter instead (the paper's n_i = 47 / 23 / 1 baselines)
    kind: Literal["series", "parallel"] = "series"
    targets: Sequence[str] = field(default_factory=lambda: DEFAULT_TARGETS)
    act_layer: str = "gelu"
    bias: bool = True
    scale: float = 1.0  # output scale of a parallel adapter

    def __post_init__(self):
        if self.hidden is not None and self.sigma is not None:
            # a fixed width overrides the default compression rate
            self.sigma = None
        if self.sigma is None and self.hidden is None:
            raise ValueError("AdapterConfig.sigma: set sigma (compression rate) or hidden (fixed width), got neither")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"AdapterConfig.sigma: expected a number > 0, got {self.sigma!r}")
        if self.hidden is not None and (not isinstance(self.hidden, int) or self.hidden < 1):
            raise ValueError(f"AdapterConfig.hidden: expected an integer >= 1, got {self.hidden!r}")
        if self.kind not in ("series", "parallel"):
            raise ValueError(f"AdapterConfig.kind: expected 'series' or 'parallel', got {self.kind!r}")
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        if not self.targets:
            raise ValueError("AdapterConfig.targets: expected at least one module-name pattern, got none")
        if self.act_layer not in _ACTIVATIONS:
            raise ValueError(f"AdapterConfig.act_layer: unknown activation {self.act_layer!r};"
                             f"{did_you_mean(self.act_layer, list(_ACTIVATIONS))} allowed: {', '.join(_ACTIVATIONS)}")


def output_dim(module: nn.Module) -> int:
    """Width of a sub-layer's output: ``out_features`` / ``out_channels`` of its last Linear / Conv layer."""
    last = None
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            last = m
    if last is None:
        raise ValueError(f"cannot infer the output width of {type(module).__name__}: it has no Linear or Conv layer")
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def match_modules(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the modules matching any pattern, in model order; raises :class:`NoMatchingModuleError` if none."""
    patterns = list(patterns)
    names = [n for n, _ in model.named_modules() if n]
    matched = [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)]
    # a match inside another match (e.g. '*.mlp' hitting 'blocks.0.mlp' and 'blocks.0.mlp.x.mlp') keeps the outer one
    outer = [n for n in matched if not any(n.startswith(o + ".") for o in matched if o != n)]
    if not outer:
        sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        hint = did_you_mean(patterns[0], names) if len(patterns) == 1 else ""
        raise NoMatchingModuleError(
            f"targets: no module of {type(model).__name__} matches {patterns};{hint} module names look like: {sample}")
    return outer


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layout_by_type(name: str, module: nn.Module) -> Layout:
    """Output layout of a sub-layer from its layer types alone (module docstring); raises
    :class:`AdapterLayoutError` when the types do not settle it."""
    layers = [m for m in module.modules() if isinstance(m, _LAYERS)]
    kind = type(module).__name__
    if layers and all(isinstance(m, nn.Linear) for m in layers):
        return "channels_last"
    if layers and all(isinstance(m, nn.Conv2d) for m in layers):
        fmt = str(getattr(module, "output_fmt", "NCHW")).rpartition(".")[2]  # timm's Format enum or a string
        if getattr(module, "flatten", False) is True or fmt.upper() != "NCHW":
            raise AdapterLayoutError(
                f"targets: {name!r} ({kind}) ends in a Conv2d but flattens or permutes its output "
                f"(flatten={getattr(module, 'flatten', False)}, output_fmt={fmt}); pass example_inputs= to "
                "inject_adapters so its output layout is traced")
        return "channels_first"
    found = sorted({type(m).__name__ for m in layers})
    raise AdapterLayoutError(
        f"targets: {name!r} ({kind}) has layers {found}; its output layout (channels-last (..., C) or channels-first "
        "(B, C, H, W)) cannot be told from types (a permute may follow its last layer, as in ConvNeXt blocks with "
        "conv_mlp=False); pass example_inputs= to inject_adapters so it is traced")


def _layout_of_shape(name: str, module: nn.Module, dim: int, shape: tuple[int, ...], what: str) -> Layout:
    last = len(shape) >= 2 and shape[-1] == dim
    first = len(shape) == 4 and shape[1] == dim
    if last and first:  # (B, C, H, C): the types decide
        return layout_by_type(name, module)
    if last:
        return "channels_last"
    if first:
        return "channels_first"
    raise AdapterLayoutError(
        f"targets: {name!r} ({type(module).__name__}) {what} shape {tuple(shape)}; an adapter of width {dim} needs "
        f"channels last (..., {dim}) (Linear) or channels first (B, {dim}, H, W) (1x1 Conv2d)")


@torch.no_grad()
def trace_shapes(model: nn.Module, names: Sequence[str], example_inputs: Any) -> dict[str, tuple[object, object]]:
    """Name -> (first positional input, output) of each named sub-layer on one forward of ``example_inputs``
    (tensors replaced by their shapes; anything else by its type name). Eval mode, no grad; hooks always removed."""
    seen: dict[str, tuple[object, object]] = {}

    def describe(v):
        return tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__

    def make_hook(name: str):
        def hook(_module, args, output):
            seen.setdefault(name, (describe(args[0]) if args else "nothing", describe(output)))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _layouts(model: nn.Module, names: Sequence[str], dims: dict[str, int], kind: str,
             example_inputs: Any) -> dict[str, Layout]:
    if example_inputs is None:
        return {n: layout_by_type(n, model.get_submodule(n)) for n in names}
    shapes = trace_shapes(model, names, example_inputs)
    layouts = {}
    for n in names:
        sub = model.get_submodule(n)
        if n not in shapes:
            raise AdapterLayoutError(f"targets: {n!r} ({type(sub).__name__}) was not called by the forward on "
                                     "example_inputs, so its output layout is unknown")
        inp, out = shapes[n]
        if not isinstance(out, tuple):
            raise AdapterLayoutError(f"targets: {n!r} ({type(sub).__name__}) returns a {out}, not a tensor; an "
                                     "adapter wraps a sub-layer with one tensor output")
        layouts[n] = _layout_of_shape(n, sub, dims[n], out, "outputs")
        if kind == "parallel":  # the branch reads the input: same width, same layout
            if not isinstance(inp, tuple) or _layout_of_shape(n, sub, dims[n], inp, "takes an input of") != layouts[n]:
                raise AdapterLayoutError(f"targets: {n!r} ({type(sub).__name__}) takes {inp} and outputs {out}; a "
                                         f"parallel adapter needs its input in the output's layout ({layouts[n]})")
    return layouts


def inject_adapters(model: nn.Module, config: AdapterConfig | None = None, *,
                    linear_layer: Callable[..., nn.Module] = nn.Linear, example_inputs: Any = None,
                    **kwargs) -> list[str]:
    """Wrap every target sub-layer of ``model`` with an adapter, in place; returns the wrapped names.

    Every target is resolved and checked before the model is touched, so a bad pattern or an output layout that
    cannot carry an adapter leaves it unchanged. Channels-last outputs get Linear adapters, channels-first (NCHW)
    outputs 1x1-conv adapters; the layout is traced on ``example_inputs`` when given (a tensor, a tuple of positional
    inputs or a dict of keyword inputs; one forward in eval mode), else decided by layer types (module docstring).
    ``linear_layer`` builds down and up of channels-last adapters (default ``nn.Linear``; PHM layers for PHM-Adapter
    / Compacter). New adapters are created on the device and in the dtype of the sub-layer they wrap.

    Example::

        model = timm.create_model('swin_tiny_patch4_window7_224', pretrained=True, num_classes=100)
        names = inject_adapters(model, AdapterConfig(sigma=32))   # 24 Linear adapters
        cnn = timm.create_model('convnext_atto', num_classes=100)
        inject_adapters(cnn, AdapterConfig(sigma=8, targets=['stages.*.blocks.*']),
                        example_inputs=torch.randn(1, 3, 224, 224))   # 1x1-conv adapters on (B, C, H, W)
    """
    if config is not None and kwargs:
        raise TypeError(f"pass an AdapterConfig or keyword arguments, not both (got {sorted(kwargs)})")
    config = config if config is not None else AdapterConfig(**kwargs)
    names = match_modules(model, config.targets)
    already = [n for n in names if isinstance(model.get_submodule(n), AdapterLayer)]
    if already:
        raise PrunekitError(f"targets: {already[:3]} already carry an adapter; inject once per model")
    dims = {n: output_dim(model.get_submodule(n)) for n in names}
    layouts = _layouts(model, names, dims, config.kind, example_inputs)
    conv_targets = [n for n in names if layouts[n] == "channels_first"]
    if conv_targets and linear_layer is not nn.Linear:
        raise AdapterLayoutError(
            f"targets: {conv_targets[:3]} output channels first (B, C, H, W) and get 1x1-conv adapters, but "
            f"linear_layer={getattr(linear_layer, '__name__', linear_layer)!r} builds channels-last layers; allowed: "
            "the default nn.Linear, or targets with channels-last outputs")

    hidden = {n: hidden_size(dims[n], config.sigma, config.hidden) for n in names}

    wrapper = SeriesAdapterLayer if config.kind == "series" else ParallelAdapterLayer
    for name in names:
        sub, dim = model.get_submodule(name), dims[name]
        layer = Conv1x1 if layouts[name] == "channels_first" else linear_layer
        ref = next(sub.parameters(), None)
        adapter = Adapter(dim, hidden[name], act_layer=config.act_layer,
                          bias=config.bias, residual=config.kind == "series", scale=config.scale, linear_layer=layer)
        if ref is not None:
            adapter.to(device=ref.device, dtype=ref.dtype)
        set_submodule(model, name, wrapper(sub, adapter))
    return names


def find_adapters(model: nn.Module) -> dict[str, Adapter]:
    """Name -> adapter for every adapter currently in ``model`` (names end in ``.adapter``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Adapter)}


def remove_empty_adapters(model: nn.Module) -> list[str]:
    """Replace every wrapper whose adapter has no neuron left by its bare sub-layer; returns the adapters removed.

    With zero neurons a series adapter is ``x + up_bias`` and a parallel one adds ``up_bias``; the up bias of a
    zero-width adapter is only meaningful as a leftover, so it goes too: the layer becomes exactly the sub-layer.
    """
    removed = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, AdapterLayer) and mod.adapter.hidden == 0:
            set_submodule(model, name, mod.base_layer)
            removed.append(name + ".adapter")
    return removed


def _remove_emptied(model: nn.Module, group_names: Sequence[str]) -> list[str]:
    """The adapter policy's ``on_empty``: wrappers of the emptied adapters (groups ``<layer>.adapter.down``) become
    their bare sub-layer; returns the adapters removed (``<layer>.adapter``)."""
    removed = []
    for name in group_names:
        layer = name.rsplit(".adapter.", 1)[0]
        try:
            mod = model.get_submodule(layer)
        except AttributeError:
            continue
        if isinstance(mod, AdapterLayer) and mod.adapter.hidden == 0:
            set_submodule(model, layer, mod.base_layer)
            removed.append(layer + ".adapter")
    return removed


# An adapter may lose every neuron (TINA removes whole adapters, Fig. 4); the wrapper then goes.
ADAPTER_POLICY = Policy(min_width=0, on_empty=_remove_emptied, check_forward=False)


def adapter_groups(model: nn.Module, example_inputs, forward_fn: Callable | None = None) -> list[Group]:
    """The ``down.out <-> up.in`` group of every adapter in ``model`` (one per adapter, never the backbone)."""
    adapters = list(find_adapters(model).values())
    if not adapters:
        return []
    return find_groups(model, example_inputs, only=adapters, forward_fn=forward_fn, kind="adapter",
                       policy=ADAPTER_POLICY)


adapter_groups.group_source = ("adapters", {})
