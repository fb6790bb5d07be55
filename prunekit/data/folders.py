"""Image files in folders: ``imagefolder`` (``root/train/<class>/*``, ``root/val/<class>/*``) and ``domainnet``
(``root`` holding ``<domain>/<class>/*`` and the official ``<domain>_train.txt`` / ``<domain>_test.txt``).

Every file a split will use is checked before training starts (a bad file would crash a run mid-epoch); unreadable
ones stop the run, or are left out with :class:`UnreadableImagesWarning` under ``data.skip_unreadable: true``.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from .datasets import DataBundle, DataSize, existing_root, image_transforms, register_dataset
from ..io.files import read_lines
from ..registry import PrunekitError

__all__ = ["IMAGE_EXTENSIONS", "UnreadableImagesWarning", "DOMAINNET_DOMAINS"]

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
    root = existing_root(cfg)
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
    t_train, t_val = image_transforms(img_size, mean, std, cfg.augment)
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
    root = existing_root(cfg)
    t_train, t_val = image_transforms(img_size, mean, std, cfg.augment)
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
    lines = read_lines(listing)
    items = []
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise PrunekitError(f"{listing}: line {i}: expected '<image path> <class index>', got {line[:80]!r}")
        items.append((parts[0], int(parts[1])))
    return items
