"""The adapters are a client of the generic core: :func:`adapter_groups` finds one group per adapter (``down.out <->
up.in``, kind ``'adapter'``) and gives it :data:`ADAPTER_POLICY` (``min_width=0``; ``on_empty`` removes the wrapper),
so scopes, plans and the engine never need to know what an adapter is.

An adapter pruned to zero neurons is removed: its wrapper is replaced by the bare sub-layer, which is exactly the
identity adapter at zero parameters and zero runtime cost (:func:`remove_empty_adapters`).
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..core.graph import Group, find_groups
from ..core.policy import Policy
from ..core.wrapper import set_submodule

from .layers import Adapter, AdapterLayer

__all__ = ["adapter_groups", "find_adapters", "remove_empty_adapters", "ADAPTER_POLICY"]


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
