"""AdaptFormer (Chen et al., 2022): a bottleneck in parallel with every MLP sub-layer, output scaled by s.

``h' = mlp(x) + s * up(relu(down(x)))`` where x is the MLP's input (the normalised residual stream in timm blocks;
the original feeds the un-normalised stream through the adapter's own LayerNorm, which prunekit leaves out to stay
a plain bottleneck). AdaptFormer-64 and -256 are ``hidden: 64`` / ``hidden: 256``. ``up`` starts at zero. Its
bottlenecks are ordinary adapters, so TINA can prune them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..adapters.inject import AdapterConfig, inject_adapters
from ..config import option
from ..errors import ConfigError
from ..models.params import mark_trainable
from .base import Method, register_method


@dataclass
class AdaptFormerConfig:
    hidden: int = field(**option("bottleneck width (AdaptFormer-64 / -256)", default=64))
    scale: float = field(**option("s, the scale on the branch's output", default=0.1))
    targets: list[str] = field(**option("glob patterns of the MLP sub-layers", default_factory=lambda: [
        "*blocks.*.mlp"]))

    def __post_init__(self):
        if self.hidden < 1:
            raise ConfigError(f"method.hidden: expected an integer >= 1, got {self.hidden}")


def adapter_config(config: AdaptFormerConfig) -> AdapterConfig:
    return AdapterConfig(hidden=config.hidden, kind="parallel", scale=config.scale, act_layer="relu",
                         targets=tuple(config.targets))


def apply(model, config: AdaptFormerConfig) -> None:
    inject_adapters(model, adapter_config(config))
    mark_trainable(model)


ADAPTFORMER = register_method(Method("adaptformer", AdaptFormerConfig, apply, prunable=True,
                                     description="parallel bottleneck (ReLU, scale s) beside every MLP + head",
                                     adapters=adapter_config))
