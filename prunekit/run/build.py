"""Build: the model a recipe trains, as a function of the recipe alone (backbone, checkpoint weights, method).

A run, ``prunekit eval`` and ``prunekit inspect`` all build through :func:`build_model`, so a run directory always
rebuilds into the model that wrote it (before its plans are replayed).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.backbone import create_backbone, load_backbone_weights, load_checkpoint_file
from ..data.datasets import data_size
from ..errors import PrunekitError
from ..recipe.spec import Recipe
from .check import check_recipe

__all__ = ["build_model", "build_backbone", "example_inputs", "num_classes_for"]


def build_model(recipe: Recipe, num_classes: int, random_weights: bool = False) -> nn.Module:
    """Backbone (hub or checkpoint weights unless ``random_weights``) with the recipe's method applied.

    The initial weights depend on the recipe alone (``train.seed``), whatever the global RNG holds.
    """
    checked = check_recipe(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        model = _backbone(recipe, num_classes, random_weights)
        checked.method.apply(model, checked.config)  # adapters drawn right after the backbone, from the same seed
    return model


def build_backbone(recipe: Recipe, num_classes: int, random_weights: bool = False) -> nn.Module:
    """The recipe's backbone alone (no method), its weights as :func:`build_model` gives them: the hub's or
    ``model.checkpoint``'s, else drawn from ``train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        return _backbone(recipe, num_classes, random_weights)


def _backbone(recipe: Recipe, num_classes: int, random_weights: bool) -> nn.Module:
    model = create_backbone(recipe.model, num_classes, pretrained=False if random_weights else None)
    if recipe.model.checkpoint and not random_weights:
        state = load_checkpoint_file(recipe.model.checkpoint)
        load_backbone_weights(model, state, recipe.model.checkpoint, reset_head=recipe.model.reset_head)
    return model


def example_inputs(recipe: Recipe, device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero batch of one image the model accepts, for tracing its dependency graph."""
    return torch.zeros(1, recipe.model.in_chans, recipe.model.img_size, recipe.model.img_size, device=device)


def num_classes_for(recipe: Recipe) -> int:
    """Classes of the recipe's dataset without loading it (the files' listing, for an image folder); an error when
    nothing tells."""
    n = data_size(recipe.data).num_classes
    if n is None:
        raise PrunekitError(f"data.name={recipe.data.name}: the number of classes comes from the files; load the data")
    return n
