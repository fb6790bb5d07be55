"""The method protocol and registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from torch import nn

from ..config import parse_section
from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class Method:
    """A parameter-efficient (or not) way to adapt a backbone.

    Attributes:
        name: registry name.
        config_cls: dataclass of the method's recipe keys (besides ``name``).
        apply: ``apply(model, config)`` changes the model in place and sets ``requires_grad``.
        prunable: whether it creates groups a pruning strategy can shrink (adapters).
        description: one line for ``prunekit list methods``.
        adapters: ``adapters(config) -> AdapterConfig`` for a method that injects plain bottleneck adapters (and
            trains only them and the head): how its adapters compute, so runs of it can share one backbone
            (:func:`prunekit.load_tasks`); None for every other method.
        freezes_backbone: whether backbone weights stay as loaded while the method trains (every
            parameter-efficient method: adapters, LoRA, BitFit, prompts, a linear probe ...). Such a method learns
            nothing useful on random weights, so a recipe must give it weights (``model.checkpoint``,
            ``model.pretrained``, ``model.pretrain``) or opt in with ``model.allow_random_backbone: true``.
            False for full fine-tuning, which is also how a backbone is pretrained from scratch.
    """

    name: str
    config_cls: type
    apply: Callable[[nn.Module, Any], None]
    prunable: bool = False
    description: str = ""
    freezes_backbone: bool = True
    adapters: Optional[Callable[[Any], Any]] = None

    def parse_config(self, section: Mapping[str, Any], path: str = "method") -> Any:
        return parse_section(self.config_cls, {k: v for k, v in section.items() if k != "name"}, path)


METHODS: Registry[Method] = Registry("method", entry_point_group="prunekit.methods", builtins=("prunekit.methods",))


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    return METHODS.register(method.name, method, overwrite=overwrite)


def get_method(name: str) -> Method:
    return METHODS.get(name)


def build_method(section: Mapping[str, Any]) -> tuple[Method, Any]:
    """The method named in a recipe's ``method`` section and its validated config."""
    name = section.get("name")
    try:
        method = get_method(name)
    except KeyError as e:
        raise ConfigError(f"method.name: {e}") from None
    return method, method.parse_config(section)
