"""Wrapping a sub-layer without breaking the model around it.

``BaseLayerWrapper`` keeps the wrapped module under ``base_layer`` (as PEFT does), forwards attribute look-ups it
lacks to it (timm calls methods such as Swin's ``attn.set_window_size``), and moves the keys of a state dict written
for the bare module under ``base_layer.`` when loading, so a backbone checkpoint still loads after injection.
"""
from __future__ import annotations

from torch import nn

__all__ = ["BaseLayerWrapper", "set_submodule"]


class BaseLayerWrapper(nn.Module):
    """A module holding ``base_layer``; subclasses add their own children and ``forward``."""

    OWN_PREFIXES: tuple[str, ...] = ("base_layer.",)

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self._register_load_state_dict_pre_hook(_map_backbone_keys, with_module=True)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer" or name.startswith("_"):
                raise
            return getattr(self.base_layer, name)


def _map_backbone_keys(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Move keys of the bare module (``prefix + 'qkv.weight'``) under ``prefix + 'base_layer.'``."""
    own = tuple(prefix + name + "." for name in module._modules)
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        rest = key[len(prefix):]
        if "." in rest or rest not in module._parameters:  # the wrapper's own direct parameters stay
            state_dict[prefix + "base_layer." + rest] = state_dict.pop(key)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the module called ``name`` (dotted path) in ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
