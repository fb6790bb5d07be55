"""Group sources: named ways of finding a model's groups, so a plan can say how to find its groups again.

A plan records its source in ``plan.meta['groups']`` (``'adapters'``, or ``{'source': 'backbone', 'heads': True,
'ignore': [...]}``); :func:`replay` and ``load_pruned`` rebuild the groups on a fresh model from it. The built-in
sources are registered here, each importing its kind of group only when it is asked for, so the registry is complete
in any interpreter and the core never names a kind of group::

    backbone   prunekit.groups.channels.BackboneGroups(**config)   any model's channels, neurons and heads
    adapters   prunekit.adapters.groups.adapter_groups             injected adapters (TINA)

Another package adds one with :func:`register_group_source` (or the ``prunekit.group_sources`` entry-point group).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from ..core.group import GroupsFn
from ..core.plan import Plan, record_applied
from ..registry import PrunekitError, Registry

__all__ = ["GROUP_SOURCES", "register_group_source", "describe_groups_fn", "groups_fn_from", "replay",
           "DEFAULT_GROUP_SOURCE"]

DEFAULT_GROUP_SOURCE = "adapters"  # plans written before plans recorded their source were adapter plans

GROUP_SOURCES: Registry[Callable[..., GroupsFn]] = Registry("group source", entry_point_group="prunekit.group_sources")


def register_group_source(name: str, factory: Callable[..., GroupsFn], *, overwrite: bool = False):
    """Register ``factory(**config) -> groups_fn``; a groups_fn made by it should carry ``group_source = (name,
    config)`` so :func:`describe_groups_fn` can write it into a plan."""
    return GROUP_SOURCES.register(name, factory, overwrite=overwrite)


def _backbone(**config: Any) -> GroupsFn:
    from ..groups.channels import BackboneGroups

    return BackboneGroups(**{**config, "verify": False})


def _adapters() -> GroupsFn:
    from ..adapters.groups import adapter_groups

    return adapter_groups


register_group_source("backbone", _backbone)
register_group_source("adapters", _adapters)


def describe_groups_fn(fn: Any) -> dict[str, Any] | None:
    """``{'source': name, **config}`` for a groups_fn made by a registered source, else None."""
    source = getattr(fn, "group_source", None)
    if source is None:
        return None
    name, config = source
    return {"source": name, **config}


def groups_fn_from(description: str | dict[str, Any]) -> GroupsFn:
    """The groups_fn a plan's ``meta['groups']`` describes (a source name, or ``{'source': name, **config}``)."""
    if isinstance(description, str):
        return GROUP_SOURCES.get(description)()
    if not isinstance(description, dict) or "source" not in description:
        raise PrunekitError(f"plan meta 'groups': expected a group source name or {{'source': ...}}, got "
                            f"{description!r}")
    config = {k: v for k, v in description.items() if k != "source"}
    return GROUP_SOURCES.get(description["source"])(**config)


def replay(
        model: nn.Module,
        plans: Iterable[Plan],
        example_inputs,
        groups_fn: Callable[[nn.Module, Any], list] | None = None,
) -> nn.Module:
    """Apply recorded plans, in order, to a freshly built model (same architecture and adapters); returns it.

    ``groups_fn`` finds the groups again; by default each plan's ``meta['groups']`` says how.
    """
    for plan in plans:
        fn = groups_fn if groups_fn is not None else groups_fn_from(plan.meta.get("groups", DEFAULT_GROUP_SOURCE))
        plan.apply(model, fn(model, example_inputs))
        record_applied(model, plan)
    return model
