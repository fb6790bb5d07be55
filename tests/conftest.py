"""Tiny timm models with random weights (no hub) shared by the tests."""
from __future__ import annotations

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
