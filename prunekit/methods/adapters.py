"""Bottleneck adapters after every attention and MLP sub-layer (Houlsby et al.; TINA Fig. 2a), series or parallel.

Only the adapters and the head train. These are the methods TINA prunes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..adapters.inject import DEFAULT_TARGETS, AdapterConfig, inject_adapters
from ..config import option
from ..errors import ConfigError
from ..models.params import mark_trainable
from .base import Method, register_method


@dataclass
class AdaptersConfig:
    sigma: Optional[float] = field(**option("compression m_i / n_i of every adapter (TINA starts at 32)", default=32.0))
    hidden: Optional[int] = field(**option("a fixed width n_i for every adapter instead of sigma (47, 23, 1 in the "
                                           "paper)", default=None))
    targets: list[str] = field(**option("glob patterns of the sub-layers to wrap", default_factory=lambda: list(
        DEFAULT_TARGETS)))
    act_layer: str = field(**option("activation inside the adapter", default="gelu"))
    bias: bool = field(**option("biases in down and up", default=True))

    def adapter_config(self, kind: str = "series", scale: float = 1.0) -> AdapterConfig:
        return AdapterConfig(sigma=self.sigma, hidden=self.hidden, kind=kind, targets=tuple(self.targets),
                             act_layer=self.act_layer, bias=self.bias, scale=scale)

    def __post_init__(self):
        if self.hidden is not None:
            self.sigma = None  # a fixed width replaces the default compression (recipe.resolved then says no sigma)
        try:
            self.adapter_config()  # validates (sigma xor hidden, activation name, ...)
        except ValueError as e:  # AdapterConfig names its fields as Python does; in a recipe they are method.<key>
            raise ConfigError(str(e).replace("AdapterConfig.", "method.", 1)) from None


@dataclass
class ParallelAdaptersConfig(AdaptersConfig):
    scale: float = field(**option("output scale s of the parallel branch", default=1.0))


def apply_series(model, config: AdaptersConfig) -> None:
    inject_adapters(model, config.adapter_config("series"))
    mark_trainable(model)


def apply_parallel(model, config: ParallelAdaptersConfig) -> None:
    inject_adapters(model, config.adapter_config("parallel", config.scale))
    mark_trainable(model)


ADAPTERS = register_method(Method("adapters", AdaptersConfig, apply_series, prunable=True,
                                  description="series adapters after attention and MLP, + head",
                                  adapters=lambda c: c.adapter_config("series")))
PARALLEL_ADAPTERS = register_method(Method("parallel_adapters", ParallelAdaptersConfig, apply_parallel, prunable=True,
                                           description="parallel adapters beside attention and MLP, + head",
                                           adapters=lambda c: c.adapter_config("parallel", c.scale)))
