"""Tiny timm models with random weights (no hub) shared by the tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn


def tiny_vit(num_classes: int = 5, depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                             depth=depth, num_heads=2, num_classes=num_classes)


def tiny_swin(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(img_size=16, patch_size=2, window_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                           num_classes=num_classes)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 4),
    )


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture
def swin():
    return tiny_swin()


@pytest.fixture
def images():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared CPU, OpenMP threads spinning against other processes make a forward 50x
    slower; restored after each test. Modules of many small forwards use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def snapshot(root: Path) -> dict[str, tuple]:
    """Path -> (sha256, size, mtime) of every file and mtime of every folder under ``root`` (itself included): what
    the bad-input and safety tables compare before and after a command."""
    state: dict[str, tuple] = {".": ("dir", root.stat().st_mtime_ns)}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_dir():
            state[rel + "/"] = ("dir", st.st_mtime_ns)
        else:
            state[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return state
