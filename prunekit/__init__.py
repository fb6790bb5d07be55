"""prunekit: structured pruning for PyTorch; flagship strategy TINA (Tiny Adapters for Vision Transformers).

The pieces, one module each: ``graph`` (coupled groups via torch-pruning, the group protocol), ``policy`` (what a
kind of group may lose), ``adapters`` (injection, adapter groups), ``channels`` (any model's channel groups), ``heads``
(attention heads as groups), ``scorers`` (unit importance), ``scopes`` (local / global selection), ``plan`` (selection
as data), ``budget`` (sigma / params / MACs / channels targets), ``schedule`` (cycle count), ``engine`` (the iterative
loop), ``pruning`` (``prune()`` in one call), ``saving`` (save / load pruned models), ``export`` (TorchScript / ONNX),
``strategy`` (named combinations; built-ins in ``strategies/``). ``load`` and ``predict`` use what a run trained
(``prunekit.run``, the run phases).
"""
# Every public name is imported on first use (PEP 562): ``import prunekit.cli`` answers ``prunekit --help`` without
# importing torch, timm or torch-pruning; ``prunekit.prune`` / ``from prunekit import Engine`` import their module then.
from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "adapters": (
        "ADAPTER_POLICY", "Adapter", "AdapterConfig", "NoMatchingModuleError", "adapter_groups", "find_adapters",
        "inject_adapters", "remove_empty_adapters",
    ),
    "budget": ("Budget",),
    "channels": ("BackboneGroups", "backbone_groups",),
    "engine": ("CycleRecord", "Engine",),
    "graph": ("Group", "UnsupportedModelError", "find_groups",),
    "heads": (
        "HeadDimGroup", "HeadGroup", "UnsupportedAttentionError", "attention_modules", "head_dim_groups",
        "head_groups",
    ),
    "params": ("count_parameters", "mark_trainable",),
    "plan": ("Plan", "applied_plans", "replay",),
    "pruning": ("prune",),
    "registry": ("PrunekitError", "UnknownNameError",),
    # the run phases, imported only when one of these is used: a trained run for inference
    "run.loading": ("load",),
    "run.predicting": ("predict",),
    "saving": ("ArchitectureMismatchError", "load_pruned", "save_pruned",),
    "schedule": ("Schedule", "num_prunes", "oneshot_sigma0", "paper_cycle_count",),
    "scopes": ("SCOPES", "global_scope", "local_scope", "register_scope",),
    "policy": ("Policy", "UnreachableTargetError",),
    "scorers": ("SCORERS", "ScoreStats", "collect_activations", "combine", "normalized", "register_scorer", "scaled",),
    "strategy": ("STRATEGIES", "Strategy", "get_strategy", "list_strategies", "register_strategy",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
