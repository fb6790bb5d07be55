"""Derived tasks: one dataset seen through a class split, an input shift or a fixed seeded subset.

The Swin-shaped offline benchmark (``recipes/ablation_swin_offline.yaml``) adapts one backbone to several tasks made
from the few image sets that install offline; these views make them, each the same for every ``train.seed``:

- ``data.classes: [5, 6, 7, 8, 9]``: only those classes, relabelled 0 .. k-1 in the order given (Fashion-MNIST's
  classes the backbone never saw);
- ``data.shift: [rot90, invert]``: a geometric / contrast shift of every image of a grey-scale set, applied once to
  the stored uint8 images (the set is already in memory: 5,000 MNIST digits cost 4 MB);
- ``data.train_size`` / ``data.val_size``: a random subset of N images, stratified by class (largest remainders), drawn
  with ``data.split_seed``; unlike ``limit_train`` (the first N, for smoke tests) it keeps every class.

:func:`prunekit.data.datasets.load_data` applies them in that order (shift, classes, sizes), after the dataset's own
split.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import ConfigError

__all__ = ["SHIFT_OPS", "shift_images", "labels_of", "select_classes", "stratified_subset"]

# (N, H, W) uint8 -> (N, H', W') uint8; torch.rot90 turns counter-clockwise from the first axis to the second
SHIFT_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "invert": lambda x: 255 - x,
    "rot90": lambda x: torch.rot90(x, 1, (1, 2)),
    "rot180": lambda x: torch.rot90(x, 2, (1, 2)),
    "rot270": lambda x: torch.rot90(x, 3, (1, 2)),
    "hflip": lambda x: torch.flip(x, (2,)),
    "vflip": lambda x: torch.flip(x, (1,)),
    "transpose": lambda x: x.transpose(1, 2),
}


def shift_images(images: torch.Tensor, shifts: Sequence[str]) -> torch.Tensor:
    """``images`` (N, H, W) uint8 with every shift applied in order (a new contiguous tensor)."""
    for name in shifts:
        images = SHIFT_OPS[name](images)
    return images.contiguous()


class _Relabelled(Dataset):
    """``base`` restricted to ``indices``, its labels mapped through ``mapping`` (any dataset of (x, label) pairs)."""

    def __init__(self, base: Dataset, indices: list[int], mapping: dict[int, int], labels: list[int]):
        self.base, self.indices, self.mapping = base, indices, mapping
        self.targets = [mapping[labels[i]] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _ = self.base[self.indices[i]]
        return x, self.targets[i]


def labels_of(ds: Dataset) -> list[int] | None:
    """Labels of a dataset without loading its images (None: this kind of dataset cannot tell)."""
    if isinstance(ds, Subset):
        inner = labels_of(ds.dataset)
        return None if inner is None else [inner[i] for i in ds.indices]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].tolist() if len(ds.tensors) > 1 else None
    targets = getattr(ds, "targets", None)
    return [int(t) for t in targets] if targets is not None else None


def select_classes(ds: Dataset, classes: Sequence[int], source: str) -> Dataset:
    """The images of ``classes`` only, labelled by their position in ``classes``."""
    labels = labels_of(ds)
    if labels is None:
        raise ConfigError(f"data.classes: {source} cannot tell its images' labels without loading them; class "
                          "splits work on the bundled sets, image folders and DomainNet")
    mapping = {c: i for i, c in enumerate(classes)}
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        y = ds.tensors[1]
        keep = torch.isin(y, torch.tensor(list(classes), dtype=y.dtype))
        relabel = torch.full((int(max(int(y.max()), max(classes))) + 1,), -1, dtype=torch.long)
        relabel[list(classes)] = torch.arange(len(classes))
        return TensorDataset(ds.tensors[0][keep], relabel[y[keep]])
    return _Relabelled(ds, [i for i, label in enumerate(labels) if label in mapping], mapping, labels)


def _apportion(counts: dict[int, int], n: int) -> dict[int, int]:
    """``n`` split over classes in proportion to ``counts`` (largest remainders; ties by class index)."""
    total = sum(counts.values())
    quota = {c: n * k / total for c, k in counts.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(counts, key=lambda c: (-(quota[c] - take[c]), c))[:n - sum(take.values())]:
        take[c] += 1
    return take


def stratified_subset(ds: Dataset, n: int, seed: int, stream: int, key: str, source: str) -> Subset:
    """``n`` images of ``ds``, every class in proportion to its share, drawn with ``seed`` (indices in order).

    Args:
        ds: the dataset.
        n: how many to keep (at most ``len(ds)``).
        seed: ``data.split_seed`` (or ``train.seed``).
        stream: 1 for training, 2 for validation images (independent draws from one seed).
        key: the recipe key, for messages (``data.train_size``).
        source: the dataset, for messages.
    """
    if n > len(ds):
        raise ConfigError(f"{key}: {n} is more than the {len(ds)} images of {source}; expected at most {len(ds)} "
                          "(or null: all)")
    rng = np.random.default_rng([seed, stream])
    labels = labels_of(ds)
    if labels is None:
        return Subset(ds, sorted(rng.permutation(len(ds))[:n].tolist()))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    take = _apportion({c: len(v) for c, v in by_class.items()}, n)
    picked = []
    for c in sorted(by_class):
        members = np.asarray(by_class[c])
        picked += members[rng.permutation(len(members))[:take[c]]].tolist()
    return Subset(ds, sorted(picked))
