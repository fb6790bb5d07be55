"""prunekit: structured pruning for PyTorch; flagship strategy TINA (Tiny Adapters for Vision Transformers).

The pieces, one module each: ``graph`` (coupled groups via torch-pruning, the group protocol), ``policy`` (what a
kind of group may lose), ``adapters`` (injection, adapter groups), ``channels`` (any model's channel groups), ``heads``
(attention heads as groups), ``scorers`` (unit importance), ``scopes`` (local / global selection), ``plan`` (selection
as data), ``budget`` (sigma / params / MACs / channels targets), ``schedule`` (cycle count), ``engine`` (the iterative
loop), ``pruning`` (``prune()`` in one call), ``saving`` (save / load pruned models), ``export`` (TorchScript / ONNX),
``strategy`` (named combinations; built-ins in ``strategies/``).
"""
from .adapters import (
    ADAPTER_POLICY,
    Adapter,
    AdapterConfig,
    NoMatchingModuleError,
    adapter_groups,
    find_adapters,
    inject_adapters,
    remove_empty_adapters,
)
from .budget import Budget
from .channels import BackboneGroups, backbone_groups
from .engine import CycleRecord, Engine
from .graph import Group, UnsupportedModelError, find_groups
from .heads import HeadDimGroup, HeadGroup, UnsupportedAttentionError, attention_modules, head_dim_groups, head_groups
from .params import count_parameters, mark_trainable
from .plan import Plan, applied_plans, replay
from .pruning import prune
from .registry import PrunekitError, UnknownNameError
from .saving import ArchitectureMismatchError, load_pruned, save_pruned
from .schedule import Schedule, num_prunes, oneshot_sigma0, paper_cycle_count
from .scopes import SCOPES, global_scope, local_scope, register_scope
from .policy import Policy, UnreachableTargetError
from .scorers import SCORERS, ScoreStats, collect_activations, combine, normalized, register_scorer, scaled
from .strategy import STRATEGIES, Strategy, get_strategy, list_strategies, register_strategy

__version__ = "0.1.0"

__all__ = [
    "Adapter", "AdapterConfig", "NoMatchingModuleError", "find_adapters", "inject_adapters", "remove_empty_adapters",
    "CycleRecord", "Engine", "Group", "adapter_groups", "find_groups", "HeadGroup", "HeadDimGroup",
    "UnsupportedAttentionError", "attention_modules", "head_groups", "head_dim_groups", "count_parameters",
    "mark_trainable",
    "Plan", "replay", "PrunekitError", "UnknownNameError", "Schedule", "num_prunes", "oneshot_sigma0",
    "paper_cycle_count", "SCOPES", "global_scope", "local_scope", "register_scope", "SCORERS", "ScoreStats",
    "collect_activations", "combine", "register_scorer", "scaled", "STRATEGIES", "Strategy", "get_strategy",
    "list_strategies", "register_strategy", "ADAPTER_POLICY", "Budget", "Policy", "UnreachableTargetError",
    "normalized", "BackboneGroups", "UnsupportedModelError", "backbone_groups", "applied_plans", "prune",
    "ArchitectureMismatchError", "load_pruned", "save_pruned",
]
