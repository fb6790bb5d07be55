"""BitFit (Ben Zaken et al., 2022): every bias term trains, plus the head; all weights stay frozen."""
from dataclasses import dataclass

from ..models.params import mark_trainable
from .base import Method, register_method


@dataclass
class BitFitConfig:
    pass


def apply(model, config: BitFitConfig) -> None:
    mark_trainable(model, patterns=("*.bias", "bias"), adapters=False, head=True)


BITFIT = register_method(Method("bitfit", BitFitConfig, apply, description="train every bias + the head"))
