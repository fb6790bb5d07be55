"""Check, without training: ``prunekit run --dry-run`` and ``prunekit inspect`` build the recipe's model on random
weights (no data, no hub) and show what a run would prune: adapters, or the backbone's channels, neurons and heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..params import count_parameters
from ..recipe import Recipe
from ..report import short_group_name
from .build import build_model, preview_classes
from .check import check_recipe
from .prune import plan_prunes, prunable_groups

__all__ = ["dry_run", "inspect_recipe", "GroupRow", "Inspection"]


def dry_run(recipe: Recipe) -> dict[str, Any]:
    """Validate and plan: the model with random weights, its groups and the schedule (cycles, widths and sigmas, or
    for a ``strategy.budget`` the measure at the start and what every prune removes)."""
    checked = check_recipe(recipe)
    n_classes = preview_classes(recipe)
    model = build_model(recipe, n_classes, random_weights=True)
    info: dict[str, Any] = {
        "model": recipe.model.name, "method": checked.method.name, "classes": n_classes,
        "total_params": count_parameters(model), "trainable_params": count_parameters(model, trainable_only=True),
        "strategy": recipe.strategy.name, "data": recipe.data.name,
    }
    if checked.strategy is not None:
        if recipe.strategy.groups == "adapters":
            info["method_sigma"] = recipe.resolved.method_sigma  # what the method got; widths round up, see sigma0
        else:
            info["pruned"] = "backbone"
        info.update(plan_prunes(recipe, checked.strategy, model))
    else:
        info.update(cycles=recipe.strategy.cycles)
    info["epochs_total"] = info["cycles"] * recipe.train.epochs
    return info


@dataclass(frozen=True)
class GroupRow:
    """One prunable group: its short name, fan m, width n, parameters and kind (adapter, neuron, channel, head)."""

    name: str
    fan: int
    width: int
    params: int
    kind: str = "adapter"


@dataclass(frozen=True)
class Inspection:
    """What ``prunekit inspect`` prints: the groups and the parameter counts of the recipe's model."""

    groups: list[GroupRow]
    total_params: int
    trainable_params: int


def inspect_recipe(recipe: Recipe) -> Inspection:
    """The recipe's model on random weights: every prunable group (adapters, or the backbone's channel, neuron and
    head groups), and how much of the model trains."""
    check_recipe(recipe)
    model = build_model(recipe, preview_classes(recipe), random_weights=True)
    rows = [GroupRow(short_group_name(g.name), g.fan, g.width,
                     sum(p.numel() for m in g.modules for p in m.parameters(recurse=False)),
                     getattr(g, "kind", "adapter"))
            for g in prunable_groups(model, recipe)]
    return Inspection(rows, count_parameters(model), count_parameters(model, trainable_only=True))
