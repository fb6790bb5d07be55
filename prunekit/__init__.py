"""prunekit: structured pruning for PyTorch; flagship strategy TINA (Tiny Adapters for Vision Transformers).

The layers, one folder each, lowest first: ``core`` (the group protocol on torch-pruning's dependency graph, policy,
plans, undo), ``groups`` (channels, attention heads), ``ranking`` (scorers, scopes), ``budget`` (budgets, cost,
the selection search), ``engine`` (the iterative engine, ``prune()``, schedule, strategies; built-ins in
``strategies/``), ``native`` (reloading with timm / transformers alone), ``adapters`` (TINA's adapters),
``methods`` (the PET baselines), ``io`` (files: run directories, saved pruned models, export), ``data``, ``models``,
``train``, ``recipe``, ``run`` (a recipe's phases), ``ablation``; ``cli`` on top. ``docs/architecture.md`` draws them.
"""
# Every public name is imported on first use (PEP 562): ``import prunekit.cli`` answers ``prunekit --help`` without
# importing torch, timm or torch-pruning; ``prunekit.prune`` / ``from prunekit import Engine`` import their module then.
from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    # pruning any model: one call, iteratively, saved and reloaded
    "engine.oneshot": ("prune",),
    "engine.iterative": ("Engine",),
    "engine.history": ("CycleRecord",),
    "budget.search": ("Budget", "count_parameters",),
    "budget.meter": ("LatencyMeter",),
    "budget.latency": ("LatencyTable", "latency_table",),
    "engine.distill": ("Distill", "Teacher", "distillation_loss",),
    "groups.channels": ("BackboneGroups", "backbone_groups",),
    "groups.heads": (
        "HeadDimGroup", "HeadGroup", "UnsupportedAttentionError", "attention_modules", "head_dim_groups",
        "head_groups", "register_head_layout",
    ),
    "core.group": ("Group", "GroupLike", "UnsupportedModelError",),
    "core.graph": ("find_groups",),
    "core.plan": ("Plan", "applied_plans", "register_after_apply",),
    "core.walk": ("DiscoveryBudget", "DiscoveryBudgetError",),
    "core.policy": ("Policy", "UnreachableTargetError",),
    "engine.sources": ("register_group_source", "replay",),
    "io.pruned": ("ArchitectureMismatchError", "load_pruned", "save_pruned",),
    "io.export": ("export", "ExportError",),
    "native": ("NotNativeError", "architecture_kwargs", "check_native", "native_reload",),
    # TINA: adapters in a frozen backbone
    "adapters.layers": ("Adapter", "NoMatchingModuleError",),
    "adapters.inject": ("AdapterConfig", "inject_adapters",),
    "adapters.groups": ("ADAPTER_POLICY", "adapter_groups", "find_adapters", "remove_empty_adapters",),
    "models.params": ("mark_trainable",),
    # ranking and strategies: what goes, and named combinations
    "ranking.scorers": ("SCORERS", "ScoreStats", "combine", "normalized", "register_scorer", "scaled",),
    "ranking.calibration": ("collect_activations",),
    "ranking.scopes": ("SCOPES", "global_scope", "local_scope", "register_scope",),
    "engine.strategy": ("STRATEGIES", "Strategy", "get_strategy", "list_strategies", "register_strategy",),
    # the other extension points of recipes
    "methods.base": ("register_method",),
    "data.datasets": ("register_dataset",),
    "models.backbone": ("register_model",),
    "errors": ("PrunekitError", "UnknownNameError", "ConfigError",),
    # the run phases, imported only when one of these is used: a trained run for inference
    "run.loading": ("load",),
    "run.predicting": ("predict",),
    # many tasks on one backbone
    "tasks.model": ("MultiTaskModel", "TaskLogits", "load_tasks",),
    "tasks.predict": ("predict_tasks",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
