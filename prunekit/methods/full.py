"""Full fine-tuning: every parameter trains (Tables 1-2, "Full fine-tuning"); also how a backbone is pretrained."""
from dataclasses import dataclass

from .base import Method, register_method


@dataclass
class FullConfig:
    pass


def apply(model, config: FullConfig) -> None:
    model.requires_grad_(True)


FULL = register_method(Method("full", FullConfig, apply, description="train every parameter",
                              freezes_backbone=False))
