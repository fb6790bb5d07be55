"""Linear probe: only the classifier head trains (Tables 1-2, "Linear prob")."""
from dataclasses import dataclass

from ..models.params import mark_trainable
from .base import Method, register_method


@dataclass
class LinearConfig:
    pass


def apply(model, config: LinearConfig) -> None:
    mark_trainable(model, adapters=False, head=True)


LINEAR = register_method(Method("linear", LinearConfig, apply, description="train the classifier head only"))
