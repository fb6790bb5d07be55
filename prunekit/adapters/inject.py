"""Injecting adapters into a model: which sub-layers (``targets``), at which size, in which layout.

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
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import nn

from ..core.graph import call_model
from ..registry import PrunekitError, did_you_mean
from ..core.wrapper import set_submodule

from .layers import (_ACTIVATIONS, Adapter, AdapterLayer, AdapterLayoutError, Conv1x1, Layout, NoMatchingModuleError,
                     ParallelAdapterLayer, SeriesAdapterLayer, hidden_size)

__all__ = ["AdapterConfig", "inject_adapters", "layout_by_type", "trace_shapes", "match_modules", "output_dim",
           "DEFAULT_TARGETS"]

# timm ViT (``blocks.3.attn``), Swin (``layers.1.blocks.0.mlp``), DeiT, BEiT, EVA ... all name their sub-layers so.
DEFAULT_TARGETS = ("*blocks.*.attn", "*blocks.*.mlp")


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
