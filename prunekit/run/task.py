"""Data: the task's images, normalised as the backbone expects, and the loaders that feed training and evaluation."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from ..backbone import normalization
from ..data import DataBundle, eval_transform, load_data, make_loaders
from ..recipe import Recipe

__all__ = ["Task", "load_bundle", "load_task", "calibration_batches", "image_transform"]


@dataclass
class Task:
    """A recipe's data: the train / validation sets and their seeded loaders."""

    bundle: DataBundle
    train: DataLoader
    val: DataLoader


def load_bundle(recipe: Recipe) -> DataBundle:
    """The ``data`` section's sets at ``model.img_size``, normalised with the backbone's mean / std."""
    mean, std = normalization(recipe.model.name)
    return load_data(recipe.data, recipe.model.img_size, mean, std, seed=recipe.train.seed,
                     in_chans=recipe.model.in_chans)


def image_transform(recipe: Recipe) -> Callable[[object], torch.Tensor]:
    """One image file (a PIL image) as the recipe's validation set presents its images (``data.eval_transform``,
    normalised for the backbone as :func:`load_bundle` normalises)."""
    mean, std = normalization(recipe.model.name)
    return eval_transform(recipe.data.name, recipe.model.img_size, mean, std, recipe.model.in_chans)


def load_task(recipe: Recipe, device: torch.device, distributed: bool = False, num_workers: int | None = None) -> Task:
    """Sets and loaders; ``distributed``: this rank's share of every global batch (see data.make_loaders).

    Args:
        recipe: the recipe.
        device: where batches go (pinned memory on CUDA).
        distributed: under torchrun.
        num_workers: loader processes (default ``data.num_workers``).
    """
    t = recipe.train
    bundle = load_bundle(recipe)
    workers = recipe.data.num_workers if num_workers is None else num_workers
    train, val = make_loaders(bundle, t.batch_size, t.eval_batch, workers, t.seed, pin_memory=device.type == "cuda",
                              distributed=distributed)
    return Task(bundle, train, val)


def calibration_batches(task: Task, recipe: Recipe, device: torch.device
                        ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The first ``strategy.calibration_batches`` training batches, in order, as ``(images, labels)`` on ``device``:
    what activation scorers (the images) and gradient scorers (both) measure."""
    loader = DataLoader(task.bundle.train, batch_size=recipe.train.batch_size, shuffle=False,
                        collate_fn=task.bundle.collate_fn)
    k = recipe.strategy.calibration_batches
    return lambda: ((x.to(device), y.to(device)) for x, y in itertools.islice(loader, k))
