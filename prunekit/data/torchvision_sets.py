"""torchvision's natural-image sets: ``cifar10``, ``cifar100``, ``svhn``, ``flowers102``, read from ``data.root``
(default ``~/.cache/prunekit/datasets``) or downloaded there with ``data.download: true``."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from .datasets import DIGIT_CLASSES, DataBundle, default_data_root, fixed_size, image_transforms, register_dataset
from ..registry import PrunekitError

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
        t_train, t_val = image_transforms(img_size, mean, std, cfg.augment)
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
                 size=fixed_size(10, 50000, 10000), description="CIFAR-10 (torchvision; 50k/10k)")
register_dataset("cifar100", _torchvision("cifar100", _cifar("CIFAR100"), 100), num_classes=100,
                 size=fixed_size(100, 50000, 10000), description="CIFAR-100 (torchvision; 50k/10k)")
register_dataset("svhn", _torchvision("svhn", _svhn, 10, DIGIT_CLASSES), num_classes=10,
                 size=fixed_size(10, 73257, 26032),
                 description="SVHN (torchvision; 73k/26k)")
register_dataset("flowers102", _torchvision("flowers102", _flowers, 102), num_classes=102,
                 size=fixed_size(102, 2040, 6149), description="Oxford Flowers-102 (torchvision; train+val / test)")
