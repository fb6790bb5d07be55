"""Fashion-MNIST at 32 px for the recovery and latency benchmarks: data splits, cached pretrained CNNs / ViTs,
the fixed recovery (fine-tuning, with or without distillation), top-1 and latency.

The data is Debian's ``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``: 60,000 training and
10,000 test images in ``/usr/share/datasets/fashion-mnist``), read by prunekit's ``fashion_mnist`` dataset at 32 px,
one channel. Splits (fixed, seed 0): a *recovery* subset of the training set (what fine-tuning after a prune sees), a
disjoint *held-out* subset of the training set (calibration for ModelOpt's score function), and the first images of
the test set (every top-1 reported).

Pretrained models are cached in ``~/.cache/prunekit/checkpoints/<arch>-fmnist32.safetensors`` (the whole training set,
``PRETRAIN_EPOCHS`` epochs), their test top-1 in the file's metadata, like the quickstart's checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset

import timm

from prunekit.data.datasets import DataBundle
from prunekit.engine.distill import Distill, Teacher
from prunekit.recipe.sections import DataSection, TrainSection
from prunekit.config import parse_section
from prunekit.run.task import load_bundle
from prunekit.recipe.spec import Recipe
from prunekit.train.trainer import Trainer, seed_everything

CACHE = Path("~/.cache/prunekit/checkpoints").expanduser()
IMG, CLASSES = 32, 10
PRETRAIN_EPOCHS = 2
ARCHS = {  # timm names and constructor arguments for 32 px, one channel
    "resnet18": ("resnet18", {}),
    "mobilenetv2_100": ("mobilenetv2_100", {}),
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": IMG, "patch_size": 4, "embed_dim": 192, "depth": 6,
                                          "num_heads": 3}),
}


def create(arch: str) -> nn.Module:
    name, kw = ARCHS[arch]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, in_chans=1, **kw)


@dataclasses.dataclass
class Splits:
    bundle: DataBundle
    recovery: Subset
    held_out: Subset
    test: Subset

    def loader(self, which: str, batch: int, seed: int = 0, shuffle: bool = False) -> DataLoader:
        data = {"recovery": self.recovery, "held_out": self.held_out, "test": self.test,
                "train": self.bundle.train}[which]
        return DataLoader(data, batch_size=batch, shuffle=shuffle, collate_fn=self.bundle.collate_fn,
                          generator=torch.Generator().manual_seed(seed) if shuffle else None)


def splits(recovery: int, held_out: int, test: int) -> Splits:
    """The fixed subsets (seed 0) of prunekit's fashion_mnist at 32 px."""
    recipe = Recipe()
    recipe.model.img_size, recipe.model.in_chans = IMG, 1
    recipe.data = parse_section(DataSection, {"name": "fashion_mnist", "augment": False}, "data")
    bundle = load_bundle(recipe)
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0)).tolist()
    return Splits(bundle, Subset(bundle.train, order[:recovery]),
                  Subset(bundle.train, order[recovery:recovery + held_out]),
                  Subset(bundle.val, list(range(min(test, len(bundle.val))))))


def train_config(epochs: int, lr: float, batch: int, seed: int = 0, warmup: int = 0) -> TrainSection:
    return parse_section(TrainSection, {"epochs": epochs, "warmup_epochs": warmup, "lr": lr, "batch_size": batch,
                                        "weight_decay": 0.05, "seed": seed, "device": "cpu",
                                        "deterministic": False}, "train")


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = seen = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        seen += len(y)
    return correct / seen


def pretrained(arch: str, data: Splits, quick: bool = False) -> tuple[nn.Module, float]:
    """The cached pretrained model (trained once on all 60,000 images) and its top-1 on the test subset."""
    model = create(arch)
    path = CACHE / f"{arch}-fmnist32{'-quick' if quick else ''}.safetensors"
    if not path.exists():
        t0 = time.perf_counter()
        seed_everything(0, deterministic=False)
        cfg = train_config(1 if quick else PRETRAIN_EPOCHS, 2e-3, 128, warmup=0 if quick else 1)
        if quick:
            cfg.max_steps_per_epoch = 3
        loader = data.loader("train", cfg.batch_size, seed=0, shuffle=True)
        trainer = Trainer(cfg, loader, data.loader("test", 256), torch.device("cpu"))
        trainer.train_cycle(model, trainer.make_optimizer(model.parameters()), 0)
        acc = top1(model, data.loader("test", 256))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  {"test_top1": f"{acc:.6f}", "epochs": str(cfg.epochs), "seconds": f"{time.perf_counter() - t0:.0f}"})
        print(f"pretrained {arch}: top-1 {acc:.4f} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), top1(model, data.loader("test", 256))


def recover(model: nn.Module, data: Splits, epochs: int, seed: int, teacher: nn.Module | None = None,
            lr: float = 1e-3, batch: int = 64, quick: bool = False) -> dict[str, Any]:
    """The fixed recovery: ``epochs`` of AdamW + cosine on the recovery subset, distilled from ``teacher`` (the
    unpruned model; prunekit's defaults alpha 0.5, T 4) when given. Returns the test top-1 and the seconds."""
    seed_everything(seed, deterministic=False)
    cfg = train_config(epochs, lr, batch, seed)
    if quick:
        cfg.max_steps_per_epoch = 2
    trainer = Trainer(cfg, data.loader("recovery", batch, seed=seed, shuffle=True), data.loader("test", 256),
                      torch.device("cpu"))
    t0 = time.perf_counter()
    tutor = Teacher.snapshot(teacher, Distill()) if teacher is not None else None
    trainer.train_cycle(model, trainer.make_optimizer(model.parameters()), 1, tutor)
    return {"top1": top1(model, data.loader("test", 256)), "recovery_seconds": time.perf_counter() - t0}


def latency_ms(models: dict[str, nn.Module], batch: int, rounds: int, threads: int = 1) -> dict[str, float]:
    """Median milliseconds of a forward of ``batch`` images, every model once per round (interleaved), one thread."""
    from common import interleaved

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(batch, 1, IMG, IMG)
    try:
        for m in models.values():
            m.eval()
        with torch.no_grad():
            out = interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, rounds)
    finally:
        torch.set_num_threads(before)
    return {k: 1e3 * v for k, v in out.items()}


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
