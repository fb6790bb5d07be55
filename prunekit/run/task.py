"""Data: the task's images, normalised as the backbone expects, and the loaders that feed training and evaluation."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from ..models.backbone import normalization
from ..data.datasets import DATASETS, DataBundle, DataSize, data_size, eval_transform, load_data, make_loaders
from ..errors import PrunekitError
from ..recipe.spec import Recipe

__all__ = ["Task", "TaskSize", "load_bundle", "load_task", "calibration_batches", "task_size", "PREVIEW_CLASSES",
           "image_transform"]

PREVIEW_CLASSES = 1000  # head of a preview when nothing but the (absent) files can tell the classes


@dataclass(frozen=True)
class TaskSize:
    """What a preview (dry run, inspect) knows of the data without loading it.

    Attributes:
        size: classes and images from the files' names and listings (None where they cannot tell).
        num_classes: the head a preview builds: ``size.num_classes``, else :data:`PREVIEW_CLASSES`.
        note: why the classes or sizes are unknown (the files are not there, or not usable); None when all is known.
    """

    size: DataSize
    num_classes: int
    note: str | None = None


def task_size(recipe: Recipe) -> TaskSize:
    """The data's classes and images without loading an image; a problem with the files becomes a note, so a recipe
    is checked where its data is not (a laptop, before the copy to the GPU machine)."""
    try:
        size, note = data_size(recipe.data), None
    except PrunekitError as e:
        size, note = DataSize(DATASETS.get(recipe.data.name).num_classes), str(e)
    if size.num_classes is None:
        note = note or f"data.name={recipe.data.name} tells its classes only when loaded"
        return TaskSize(size, PREVIEW_CLASSES, f"{note}; the preview assumes {PREVIEW_CLASSES} classes")
    return TaskSize(size, size.num_classes, note)


@dataclass
class Task:
    """A recipe's data: the train / validation sets and their seeded loaders."""

    bundle: DataBundle
    train: DataLoader
    val: DataLoader


def load_bundle(recipe: Recipe) -> DataBundle:
    """The ``data`` section's sets at ``model.img_size``, normalised with the backbone's mean / std; split with
    ``data.split_seed``, or ``train.seed`` when it is unset."""
    mean, std = normalization(recipe.model.name)
    d = recipe.data
    return load_data(d, recipe.model.img_size, mean, std, seed=recipe.train.seed if d.split_seed is None
                     else d.split_seed, in_chans=recipe.model.in_chans)


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
