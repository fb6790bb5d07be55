"""Backbones: any timm model or registered model builder, hub or checkpoint weights, a head sized for the task.

``model.name`` is looked up in the model-builder registry first, then in timm, so timm's names stay the default and a
package adds a model family with one :func:`register_model` call (or a ``prunekit.models`` entry point)::

    register_model("tiny_mixer", build_tiny_mixer, description="4-block MLP-Mixer for 32 px images")

    def build_tiny_mixer(cfg, num_classes, pretrained):   # cfg: the recipe's model section
        return MyMixer(img_size=cfg.img_size, in_chans=cfg.in_chans, num_classes=num_classes, **cfg.kwargs)
"""
from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .params import head_names
from ..registry import PrunekitError, Registry
from ..io.statedict import load_into, load_safetensors, with_versions

__all__ = ["ModelBuilder", "MODELS", "register_model", "check_model_name", "create_backbone", "load_checkpoint_file",
           "load_backbone_weights", "normalization"]

BuildFn = Callable[[Any, int, bool], nn.Module]


@dataclass(frozen=True)
class ModelBuilder:
    """A model family that ``model.name`` can name besides timm's.

    Attributes:
        name: the name recipes use.
        build: ``build(cfg, num_classes, pretrained) -> nn.Module``; ``cfg`` is the recipe's ``model`` section
            (``img_size``, ``in_chans``, ``kwargs`` ...), the classifier head has ``num_classes`` outputs, and
            ``pretrained`` asks for the builder's own pretrained weights (raise :class:`PrunekitError` if it has none).
        description: one line for ``prunekit list models``.
        mean, std: per-channel normalisation the model expects (the data is normalised with it).
    """

    name: str
    build: BuildFn
    description: str = ""
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)


MODELS: Registry[ModelBuilder] = Registry("model builder", entry_point_group="prunekit.models")


def register_model(name: str, build: BuildFn | None = None, *, description: str = "",
                   mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN),
                   std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD), overwrite: bool = False):
    """Let ``model.name: <name>`` build with ``build`` (used bare or as a decorator); see :class:`ModelBuilder`."""
    def deco(fn: BuildFn) -> BuildFn:
        MODELS.register(name, ModelBuilder(name, fn, description, tuple(mean), tuple(std)), overwrite=overwrite)
        return fn

    return deco if build is None else deco(build)


def _unknown_model(name: str) -> PrunekitError:
    builders = MODELS.names()
    close = difflib.get_close_matches(name, builders + timm.list_models(), n=3, cutoff=0.6)
    hint = f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    extra = f", or a registered model builder ({', '.join(builders)})" if builders else ""
    return PrunekitError(f"model.name: unknown timm model {name!r};{hint} see timm.list_models(){extra}")


def check_model_name(name: str) -> None:
    """Raise a did-you-mean error for a name that is neither a registered builder nor a timm model."""
    if name not in MODELS and not timm.is_model(name):
        raise _unknown_model(name)


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) model ``name`` expects: its builder's, timm's pretrained config's, or ImageNet's."""
    if name in MODELS:
        builder = MODELS.get(name)
        return builder.mean, builder.std
    cfg = timm.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    return tuple(cfg.mean), tuple(cfg.std)


def create_backbone(cfg, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """The model of a recipe's ``model`` section: its registered builder's, else ``timm.create_model``'s (weights
    from the hub; ``cfg.checkpoint`` is loaded by the caller).

    Args:
        cfg: the recipe's model section.
        num_classes: size of the (new) classifier head.
        pretrained: override ``cfg.pretrained`` (dry runs and ``inspect`` build random weights offline).
    """
    check_model_name(cfg.name)
    pretrained = cfg.pretrained if pretrained is None else pretrained
    if cfg.name in MODELS:
        return _build_registered(MODELS.get(cfg.name), cfg, num_classes, pretrained)
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    kwargs.setdefault("in_chans", cfg.in_chans)
    default_size = timm.get_pretrained_cfg_value(cfg.name, "input_size")
    if not default_size or default_size[-1] != cfg.img_size:
        kwargs.setdefault("img_size", cfg.img_size)
    try:
        try:
            return timm.create_model(cfg.name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e) or "img_size" in cfg.kwargs:
                raise PrunekitError(f"model.kwargs: timm.create_model({cfg.name!r}) refused them: {e}") from None
            kwargs.pop("img_size")  # CNNs take any input size
            return timm.create_model(cfg.name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except OSError as e:  # hub unreachable (huggingface_hub's errors are OSErrors), weights not cached
        raise PrunekitError(
            f"model.pretrained: could not get hub weights for {cfg.name!r} ({type(e).__name__}: "
            f"{str(e).split('. ')[0][:200]}); "
            "run once with internet to cache them, or set model.checkpoint to a local file (or pretrained: false)"
        ) from None
    except RuntimeError as e:  # missing weights, bad kwargs ...
        raise PrunekitError(f"model: could not create {cfg.name!r} (pretrained={pretrained}): {e}") from None


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (nested under 'state_dict' / 'model' is fine)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PrunekitError(f"model.checkpoint: no such file {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            sd = load_safetensors(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        raise PrunekitError(f"model.checkpoint: {str(path)!r} is not a readable checkpoint: "
                            f"{_load_failure(path, e)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PrunekitError(f"model.checkpoint: {str(path)!r} does not hold a state dict of tensors")
    versions = getattr(sd, "_metadata", None)  # a torch file's state_dict() keeps them; load_safetensors reads them
    strip = lambda k: k[len("module."):] if k == "module" or k.startswith("module.") else k  # DDP's wrapper
    out = OrderedDict((strip(k), v) for k, v in sd.items())
    if versions is not None:
        out._metadata = OrderedDict((strip(k), v) for k, v in versions.items())
    return out


def _load_failure(path: Path, error: Exception) -> str:
    """Why a checkpoint file did not load, in words (torch's own message suggests weights_only=False)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix != ".safetensors" and not head.startswith((b"PK\x03\x04", b"\x80")):
        return (f"not a torch file (no zip or pickle header; starts with {head.hex(' ')}) nor .safetensors; "
                "a corrupt or truncated download, or another format")
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0][:200]
        return (f"it holds Python objects besides tensors ({detail}); prunekit reads torch files with "
                "weights_only=True: save only the state dict's tensors (or use .safetensors)")
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''} (corrupt or truncated?)"


def load_backbone_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                          reset_head: bool = True) -> None:
    """Load backbone weights into a freshly created timm model, checking that they are for this architecture.

    The classifier head is skipped when ``reset_head`` (a new task gets a new head) or when its shape differs.
    """
    heads = tuple(n + "." for n in head_names(model))
    own = model.state_dict()
    sd = {}
    for k, v in state_dict.items():
        if k.startswith(heads) and (reset_head or k not in own or own[k].shape != v.shape):
            continue
        sd[k] = v
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd and not k.startswith(heads)]
    unexpected = [k for k in sd if k not in own]
    if mismatched or missing or unexpected:
        detail = "; ".join(filter(None, [
            f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})" if mismatched else "",
            f"{len(missing)} model keys missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unknown keys (e.g. {unexpected[0]})" if unexpected else "",
        ]))
        raise PrunekitError(f"model.checkpoint: {source} is not a checkpoint of {type(model).__name__} as configured "
                            f"(another architecture or model.kwargs?): {detail}")
    load_into(model, with_versions(sd, state_dict) if hasattr(state_dict, "_metadata") else sd, strict=False)


def _build_registered(builder: ModelBuilder, cfg, num_classes: int, pretrained: bool) -> nn.Module:
    model = builder.build(cfg, num_classes, pretrained)
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"model.name: builder {builder.name!r} returned a {type(model).__name__}, not an "
                            "nn.Module")
    return model
