"""Backbones: any timm model, with hub weights (``pretrained: true``) or a checkpoint file, head sized for the task."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .params import head_names
from .registry import PrunekitError

__all__ = ["check_model_name", "create_backbone", "load_checkpoint_file", "load_backbone_weights", "normalization"]


def _unknown_model(name: str) -> PrunekitError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return PrunekitError(f"model.name: unknown timm model {name!r};{hint} see timm.list_models()")


def check_model_name(name: str) -> None:
    """Raise a did-you-mean error for a name timm does not know."""
    if not timm.is_model(name):
        raise _unknown_model(name)


def create_backbone(cfg, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """``timm.create_model`` for a recipe's ``model`` section; weights from the hub or ``cfg.checkpoint``.

    Args:
        cfg: the recipe's model section.
        num_classes: size of the (new) classifier head.
        pretrained: override ``cfg.pretrained`` (dry runs and ``inspect`` build random weights offline).
    """
    check_model_name(cfg.name)
    pretrained = cfg.pretrained if pretrained is None else pretrained
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
            from safetensors.torch import load_file

            sd = load_file(str(path))
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
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


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
    model.load_state_dict(sd, strict=False)


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the backbone expects (timm's pretrained config; ImageNet's otherwise)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
