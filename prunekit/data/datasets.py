"""Datasets: the registry recipes' ``data.name`` picks from, and what every loader shares.

A dataset is one registered loader (:func:`register_dataset`: name, loader, classes) returning a :class:`DataBundle`;
the built-in ones live beside this module, grouped by where their images come from:

- :mod:`.bundled`: sets inside pip packages or Debian's (``mnist5k``, ``digits``, ``fashion_mnist``,
  ``fashion_mnist_mnist5k``), grey uint8 arrays batched by :class:`GreyBatchTransform`;
- :mod:`.torchvision_sets`: ``cifar10``, ``cifar100``, ``svhn``, ``flowers102`` (``data.download``);
- :mod:`.folders`: ``imagefolder`` and ``domainnet``, image files checked before training starts.

A package adds a dataset with :func:`register_dataset` in a module its ``prunekit.datasets`` entry point names;
``data.name`` then picks it like a built-in.

:func:`load_data` loads a recipe's ``data`` section and narrows it into a derived task (``data.classes``,
``data.shift``, ``data.train_size``; see :mod:`prunekit.data.views`), the same for every ``train.seed`` when
``data.split_seed`` is set; :func:`data_size` tells classes and images from file names alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .views import labels_of, select_classes, shift_images, stratified_subset
from ..errors import ConfigError
from ..registry import PrunekitError, Registry

__all__ = ["DataBundle", "DatasetInfo", "DataSize", "DATASETS", "DatasetLoader", "register_dataset", "load_data",
           "data_size", "make_loaders", "eval_transform", "default_data_root", "task_classes"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_data_root() -> Path:
    return Path(os.environ.get("PRUNEKIT_DATA", "~/.cache/prunekit/datasets")).expanduser()


@dataclass
class DataBundle:
    """Train and validation sets of one task, and how to batch them.

    ``classes`` names the labels (``classes[k]`` is label k: ``'0'`` .. ``'9'`` for digits, the folder names of an
    image folder, a torchvision set's ``classes``); None when the data does not name them.
    """

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    collate_fn: Callable | None = None
    classes: list[str] | None = None

    def __repr__(self) -> str:
        return f"DataBundle({self.name!r}, train={len(self.train)}, val={len(self.val)}, classes={self.num_classes})"

    def describe(self) -> str:
        """One line for people: ``digits (1,438 training / 359 validation images, 10 classes)``."""
        return (f"{self.name} ({len(self.train):,} training / {len(self.val):,} validation images, "
                f"{self.num_classes} classes)")


@dataclass(frozen=True)
class DataSize:
    """What a dataset's listing tells without loading an image: its classes and images (None: it cannot tell)."""

    num_classes: int | None
    train_images: int | None = None
    val_images: int | None = None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[..., DataBundle]
    num_classes: int | None  # None: read from the files (image folders)
    offline: bool  # needs nothing but pip packages
    description: str
    size: Callable[..., DataSize] | None = None  # fn(cfg) -> DataSize, from file names and listings only
    grey: bool = False  # grey uint8 images batched by GreyBatchTransform; an image file is read as grey the same way


DATASETS: Registry[DatasetInfo] = Registry("dataset", entry_point_group="prunekit.datasets", builtins=(
    f"{__package__}.bundled", f"{__package__}.torchvision_sets", f"{__package__}.folders"))

DatasetLoader = Callable[..., DataBundle]
"""``loader(cfg, img_size, mean, std, seed, in_chans) -> DataBundle``: ``cfg`` is the recipe's ``data`` section
(``root``, ``val_fraction``, ``augment`` ...); images come out resized to ``img_size`` and normalised with ``mean`` /
``std`` (the backbone's), with ``in_chans`` channels."""


def register_dataset(name: str, loader: DatasetLoader | None = None, *, num_classes: int | None, offline: bool = False,
                     description: str = "", size: Callable[..., DataSize] | None = None, grey: bool = False,
                     overwrite: bool = False):
    """Make ``data.name: <name>`` load with ``loader`` (used bare or as a decorator).

    Args:
        name: the name recipes use (a Python identifier).
        loader: see :data:`DatasetLoader`.
        num_classes: classes of the task; None when only the files can tell (a run reads it from the loaded data).
        offline: whether it needs nothing but installed packages (``prunekit list datasets`` says so).
        description: one line for ``prunekit list datasets``.
        size: ``fn(cfg) -> DataSize``: classes and images from the files' names alone (no image opened), for
            ``--dry-run`` and ``prunekit inspect``; raises :class:`PrunekitError` when the files are not usable.
            Without it a preview knows ``num_classes`` only (and assumes 1000 classes when that is None).
        grey: its images are grey (batched by :class:`GreyBatchTransform`); ``prunekit predict`` then reads an image
            file as grey, as :func:`eval_transform` says. False: as RGB through the natural-image validation transform.
        overwrite: replace a registered dataset of that name instead of raising.
    """
    def deco(fn: DatasetLoader) -> DatasetLoader:
        DATASETS.register(name, DatasetInfo(name, fn, num_classes, offline, description, size, grey),
                          overwrite=overwrite)
        return fn

    return deco if loader is None else deco(loader)


class GreyBatchTransform:
    """Collate (uint8 HxW image, label) pairs into a normalised (B, C, S, S) float batch."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], in_chans: int = 3):
        self.img_size, self.in_chans = img_size, in_chans
        self.mean = torch.tensor(mean[:in_chans], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std[:in_chans], dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, batch):
        x = torch.stack([b[0] for b in batch]).float().div_(255).unsqueeze(1)  # (B, 1, h, w)
        y = torch.stack([torch.as_tensor(b[1]) for b in batch]).long()
        return self.images(x), y

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` grey values in [0, 1] -> ``(B, in_chans, S, S)`` normalised (resized when needed)."""
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = torch.nn.functional.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                                                align_corners=False, antialias=x.shape[-1] > self.img_size)
        return (x.expand(-1, self.in_chans, -1, -1) - self.mean) / self.std


def n_val(n: int, val_fraction: float) -> int:
    return max(1, int(round(n * val_fraction)))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = n_val(n, val_fraction)
    return np.sort(perm[k:]), np.sort(perm[:k])



def fixed_size(num_classes: int, train: int, val: int) -> Callable[..., DataSize]:
    """Size of a set with official train / test splits."""
    return lambda cfg: DataSize(num_classes, train, val)


DIGIT_CLASSES = [str(d) for d in range(10)]


def _to_rgb(image):
    return image.convert("RGB")


def image_transforms(img_size: int, mean, std, augment: bool):
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(mean, std)]
    resize = T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC)
    train = [resize] + ([T.RandomHorizontalFlip()] if augment else [])
    return T.Compose([T.Lambda(_to_rgb)] + train + norm), T.Compose([T.Lambda(_to_rgb), resize] + norm)



def existing_root(cfg) -> Path:
    """``data.root`` expanded; a clear error when it does not exist or is not a folder."""
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise PrunekitError(f"data.root={str(root)!r} does not exist (data.name={cfg.name}); check the path")
    if not root.is_dir():
        raise PrunekitError(f"data.root={str(root)!r} is a file, not a folder (data.name={cfg.name})")
    return root



def load_data(cfg, img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed: int = 0, in_chans: int = 3
              ) -> DataBundle:
    """The train / validation sets described by a recipe's ``data`` section."""
    try:
        info = DATASETS.get(cfg.name)
    except KeyError as e:
        raise PrunekitError(f"data.name: {e}") from None
    bundle = info.loader(cfg, img_size, tuple(mean), tuple(std), seed, in_chans)
    if len(bundle.train) == 0 or len(bundle.val) == 0:
        raise PrunekitError(f"data.name={cfg.name}: no images found (train {len(bundle.train)}, "
                            f"val {len(bundle.val)})")
    _derive(cfg, bundle, seed)
    if cfg.limit_train is not None:
        bundle.train = Subset(bundle.train, range(min(cfg.limit_train, len(bundle.train))))
    if cfg.limit_val is not None:
        bundle.val = Subset(bundle.val, range(min(cfg.limit_val, len(bundle.val))))
    _check_classes(cfg, bundle)
    if bundle.classes is None:
        bundle.classes = _class_names(bundle.train)
    if bundle.classes is not None:
        bundle.classes = [str(c) for c in bundle.classes]
        if len(bundle.classes) != bundle.num_classes:
            bundle.classes = None  # names that do not cover the labels name nothing
    return bundle


def data_size(cfg) -> DataSize:
    """Classes and images of a recipe's ``data`` section from the files' names and listings, no image opened (what
    ``--dry-run`` and ``prunekit inspect`` show); ``data.limit_train`` / ``limit_val`` applied. Raises
    :class:`PrunekitError` where the loader would (a missing ``data.root``, an image folder without class folders)."""
    try:
        info = DATASETS.get(cfg.name)
    except KeyError as e:
        raise PrunekitError(f"data.name: {e}") from None
    size = info.size(cfg) if info.size is not None else DataSize(info.num_classes)
    train, val, classes = size.train_images, size.val_images, size.num_classes
    if getattr(cfg, "classes", None):  # a class subset: how many images it keeps is only known once loaded
        classes, train, val = len(cfg.classes), None, None
    train = getattr(cfg, "train_size", None) or train
    val = getattr(cfg, "val_size", None) or val

    def limited(n: int | None, limit: int | None) -> int | None:
        return n if n is None or limit is None else min(n, limit)

    return DataSize(classes, limited(train, cfg.limit_train), limited(val, cfg.limit_val))


def eval_transform(name: str, img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, in_chans: int = 3
                   ) -> Callable[[object], torch.Tensor]:
    """One image file (a PIL image) as dataset ``name``'s validation set presents its images: ``(in_chans, S, S)``.

    Grey sets (``DatasetInfo.grey``: digits, mnist5k, fashion_mnist) read the image as 8-bit grey and go through
    :class:`GreyBatchTransform`; every other set through the natural-image validation transform (RGB, bicubic resize
    to ``img_size``, normalised). What ``prunekit predict`` applies, so a file holding a validation image scores as
    that image did during training.
    """
    try:
        info = DATASETS.get(name)
    except KeyError as e:
        raise PrunekitError(f"data.name: {e}") from None
    if info.grey:
        grey = GreyBatchTransform(img_size, mean, std, in_chans)

        def to_tensor(image) -> torch.Tensor:
            x = torch.from_numpy(np.array(image.convert("L"), dtype=np.uint8)).float().div_(255)
            return grey.images(x[None, None])[0]

        return to_tensor
    return image_transforms(img_size, tuple(mean), tuple(std), augment=False)[1]


def _source(cfg) -> str:
    return f"data.name={cfg.name}" + (f", data.root={cfg.root!r}" if cfg.root else "")


def task_classes(cfg) -> int | None:
    """Classes of the task a ``data`` section describes without loading it (None: only the files can tell)."""
    return data_size(cfg).num_classes


def _derive(cfg, bundle: DataBundle, seed: int) -> None:
    """``data.shift``, ``data.classes``, ``data.train_size`` / ``val_size`` applied to ``bundle`` in place."""
    if cfg.shift:
        grey = isinstance(bundle.collate_fn, GreyBatchTransform) and all(
            isinstance(ds, TensorDataset) for ds in (bundle.train, bundle.val))
        if not grey:
            raise ConfigError(f"data.shift: {cfg.shift} needs a grey-scale set held in memory (mnist5k, digits, "
                              f"fashion_mnist, fashion_mnist_mnist5k); {_source(cfg)} is not one")
        bundle.train, bundle.val = (TensorDataset(shift_images(ds.tensors[0], cfg.shift), *ds.tensors[1:])
                                    for ds in (bundle.train, bundle.val))
    if cfg.classes:
        outside = [c for c in cfg.classes if c >= bundle.num_classes]
        if outside:
            raise ConfigError(f"data.classes: {outside} not among the {bundle.num_classes} classes of {_source(cfg)}; "
                              f"expected indices 0 .. {bundle.num_classes - 1}")
        bundle.train = select_classes(bundle.train, cfg.classes, _source(cfg))
        bundle.val = select_classes(bundle.val, cfg.classes, _source(cfg))
        bundle.num_classes = len(cfg.classes)
        if bundle.classes is not None:  # label k of the task is class cfg.classes[k] of the set
            bundle.classes = [bundle.classes[c] for c in cfg.classes]
    if cfg.train_size is not None:
        bundle.train = stratified_subset(bundle.train, cfg.train_size, seed, 1, "data.train_size", _source(cfg))
    if cfg.val_size is not None:
        bundle.val = stratified_subset(bundle.val, cfg.val_size, seed, 2, "data.val_size", _source(cfg))


def _check_classes(cfg, bundle: DataBundle) -> None:
    """A classification task needs two classes or more, in the set and in the training images actually used."""
    if bundle.num_classes < 2:
        names = _class_names(bundle.train)
        found = f" ({names[0]!r})" if names else ""
        raise PrunekitError(f"{_source(cfg)}: {bundle.num_classes} class{found}; a classification task needs at least "
                            f"2 classes (for an image folder: one sub-folder per class in train/ and val/)")
    labels = labels_of(bundle.train)
    if labels is None:
        return
    present = sorted(set(labels))
    if len(present) == 1:
        names = _class_names(bundle.train)
        label = present[0]
        shown = repr(names[label]) if names and 0 <= label < len(names) else str(label)
        why = (f"; data.limit_train={cfg.limit_train} keeps the first {len(labels)} images, which all belong to it "
               "(raise it or remove it)" if cfg.limit_train is not None else "")
        raise PrunekitError(f"{_source(cfg)}: the training images hold one class ({shown}) of {bundle.num_classes}"
                            f"{why}; a classification task needs at least 2 classes to train on")


def _class_names(ds: Dataset) -> list[str] | None:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return getattr(ds, "classes", None)


def make_loaders(bundle: DataBundle, batch_size: int, eval_batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False, distributed: bool = False) -> tuple[DataLoader, DataLoader]:
    """Seeded loaders: the training order depends only on ``seed`` (and the epoch count).

    ``distributed``: under torchrun, this rank's slice of the same global batches of ``batch_size`` (see
    distributed.GlobalBatchSampler) and this rank's shard of the validation set.
    """
    g = torch.Generator().manual_seed(seed)
    common = dict(num_workers=num_workers, collate_fn=bundle.collate_fn, pin_memory=pin_memory,
                  persistent_workers=num_workers > 0)
    if distributed:
        from ..core.distributed import GlobalBatchSampler, ShardSampler, world_size

        train = DataLoader(bundle.train, batch_sampler=GlobalBatchSampler(len(bundle.train), batch_size, g),
                           generator=g, **common)
        val = DataLoader(bundle.val, batch_size=max(1, eval_batch_size // world_size()),
                         sampler=ShardSampler(len(bundle.val)), **common)
        return train, val
    train = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, generator=g, drop_last=False, **common)
    val = DataLoader(bundle.val, batch_size=eval_batch_size, shuffle=False, **common)
    return train, val
