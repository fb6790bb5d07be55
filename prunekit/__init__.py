"""prunekit: structured pruning for PyTorch; flagship strategy TINA (Tiny Adapters for Vision Transformers).

The layers, one folder each, lowest first: ``core`` (the group protocol on torch-pruning's dependency graph, policy,
plans, undo), ``groups`` (channels, attention heads), ``ranking`` (scorers, scopes), ``budget`` (budgets, cost,
the selection search), ``engine`` (the iterative engine, ``prune()``, schedule, strategies; built-ins in
``strategies/``), ``adapters`` (TINA's adapters), ``methods`` (the PET baselines), ``io`` (files: run directories,
saved pruned models, export), ``data``, ``models``, ``train``, ``recipe``, ``run`` (a recipe's phases), ``ablation``;
``cli`` on top. ``docs/architecture.md`` draws them.
"""
# Every public name is imported on first use (PEP 562): ``import prunekit.cli`` answers ``prunekit --help`` without
# importing torch, timm or torch-pruning; ``prunekit.prune`` / ``from prunekit import Engine`` import their module then.
from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "adapters.layers": (
        "ADAPTER_POLICY", "Adapter", "AdapterConfig", "NoMatchingModuleError", "adapter_groups", "find_adapters",
        "inject_adapters", "remove_empty_adapters",
    ),
    "budget.search": ("Budget",),
    "groups.channels": ("BackboneGroups", "backbone_groups",),
    "engine.iterative": ("CycleRecord", "Engine",),
    "core.graph": ("Group", "UnsupportedModelError", "find_groups",),
    "groups.heads": (
        "HeadDimGroup", "HeadGroup", "UnsupportedAttentionError", "attention_modules", "head_dim_groups",
        "head_groups",
    ),
    "models.params": ("count_parameters", "mark_trainable",),
    "core.plan": ("Plan", "applied_plans",),
    "engine.sources": ("register_group_source", "replay",),
    "engine.oneshot": ("prune",),
    "registry": ("PrunekitError", "UnknownNameError",),
    # the run phases, imported only when one of these is used: a trained run for inference
    "run.loading": ("load",),
    "run.predicting": ("predict",),
    "io.pruned": ("ArchitectureMismatchError", "load_pruned", "save_pruned",),
    "engine.schedule": ("Schedule", "num_prunes", "oneshot_sigma0", "paper_cycle_count",),
    "ranking.scopes": ("SCOPES", "global_scope", "local_scope", "register_scope",),
    "core.policy": ("Policy", "UnreachableTargetError",),
    "ranking.scorers": (
        "SCORERS", "ScoreStats", "collect_activations", "combine", "normalized", "register_scorer", "scaled",
    ),
    "engine.strategy": ("STRATEGIES", "Strategy", "get_strategy", "list_strategies", "register_strategy",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
