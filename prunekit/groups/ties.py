"""Constructor ties: groups whose widths a library's constructor derives from one another (the registry, and timm's).

Uniform pruning (:mod:`prunekit.budget.uniform`) keeps repeated blocks at one width; these rules add what a
constructor needs on top, so that :func:`~prunekit.native.architecture_kwargs` can describe the pruned model:

- **ViT / DeiT** (``VisionTransformer``): attention is ``embed_dim`` wide and ``head_dim = embed_dim // num_heads``,
  so one step removes a head from every block together with ``head_dim`` channels of the residual stream
  (``patch_embed.proj``'s group); the MLP width stays free (``mlp_ratio`` is any float).
- **ConvNeXt**: every block's MLP is ``4 x`` its stage's width (``dims``), so one step removes a stage channel and
  4 MLP neurons from each of the stage's blocks.
- **Swin**: one ``mlp_ratio`` for every stage, so the MLP widths of all stages move in proportion to the stage
  widths (1, 2, 4, 8 neurons per step for Swin-T); heads keep ``head_dim`` and stay per stage.

In a transformers model a group that is no repeated block's (BERT's pooler) keeps its width: its config has no
field for it. A rule names only groups that exist and fit (every width the same multiple of its units per step);
anything else is left to the repeated-block rule.
"""
from __future__ import annotations

import re
from typing import Callable

from torch import nn

__all__ = ["register_ties", "TIES", "register_config_described", "CONFIG_DESCRIBED", "vit_ties", "convnext_ties",
           "swin_ties", "is_transformers_model"]

TieRule = Callable[[nn.Module, list], "list[list[tuple[str, int]]]"]
TIES: list[tuple[type, TieRule]] = []
"""``(model class, fn(model, groups) -> [[(group name, units per step), ...], ...])``: constructor ties."""
CONFIG_DESCRIBED: list[Callable[[nn.Module], bool]] = []
"""``fn(model) -> bool``: whether a config describes the model's widths (then a lone group keeps its width)."""


def register_ties(cls: type, fn: TieRule) -> TieRule:
    """Tie groups of models of class ``cls`` (and subclasses): ``fn(model, groups)`` returns families as lists of
    ``(group name, units per step)``; a group it does not name is left to the repeated-block rule (once per pair,
    however often it is registered)."""
    if (cls, fn) not in TIES:
        TIES.append((cls, fn))
    return fn


def register_config_described(fn: Callable[[nn.Module], bool]) -> Callable[[nn.Module], bool]:
    """Declare models for which ``fn(model)`` holds as described by a config: under uniform pruning, a group that
    belongs to no repeated block and no tie keeps its width."""
    if fn not in CONFIG_DESCRIBED:
        CONFIG_DESCRIBED.append(fn)
    return fn


def _member_names(g) -> set[str]:
    return {getattr(m, "name", "") for m in getattr(g, "members", ())}


def _stream(groups: list, module: str):
    """The group whose members include ``module`` (a residual stream's channels), or None."""
    return next((g for g in groups if module in _member_names(g) or g.name == module), None)


def vit_ties(model: nn.Module, groups: list) -> list[list[tuple[str, int]]]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not len(blocks):
        return []
    head_dim = getattr(getattr(blocks[0], "attn", None), "head_dim", None)
    stream = _stream(groups, "patch_embed.proj")
    names = {g.name for g in groups}
    heads = [f"blocks.{i}.attn.heads" for i in range(len(blocks))]
    if stream is None or not isinstance(head_dim, int) or not all(h in names for h in heads):
        return []
    return [[(stream.name, head_dim)] + [(h, 1) for h in heads]]


def convnext_ties(model: nn.Module, groups: list) -> list[list[tuple[str, int]]]:
    by_name = {g.name: g for g in groups}
    out = []
    for s, stage in enumerate(getattr(model, "stages", ())):
        blocks = getattr(stage, "blocks", ())
        if not len(blocks):
            continue
        stream = _stream(groups, f"stages.{s}.blocks.0.conv_dw")
        fc1 = [by_name.get(f"stages.{s}.blocks.{b}.mlp.fc1") for b in range(len(blocks))]
        if stream is None or any(g is None for g in fc1) or fc1[0].width % stream.width:
            continue
        ratio = fc1[0].width // stream.width
        out.append([(stream.name, 1)] + [(g.name, ratio) for g in fc1])
    return out


_SWIN_FC1 = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1$")


def swin_ties(model: nn.Module, groups: list) -> list[list[tuple[str, int]]]:
    fc1 = [g for g in groups if _SWIN_FC1.match(g.name)]
    if len(fc1) < 2:
        return []
    smallest = min(g.width for g in fc1)
    if any(g.width % smallest for g in fc1):
        return []
    return [[(g.name, g.width // smallest) for g in fc1]]


@register_config_described
def is_transformers_model(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (its ``config`` holds every width; found without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(model).__mro__)


def _register() -> None:
    try:
        from timm.models.convnext import ConvNeXt
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is a dependency, but a model of another library needs none of this
        return
    register_ties(VisionTransformer, vit_ties)
    register_ties(ConvNeXt, convnext_ties)
    register_ties(SwinTransformer, swin_ties)


_register()
