"""The iterative pruning engine (TINA, Algorithm 1), independent of any training loop.

::

    train(cycle 0)
    repeat C times:                                  # C is fixed before training starts (see schedule.py)
        groups = groups_fn(model)                    # coupled groups, e.g. every adapter's down.out <-> up.in
        scores = scorer(group, stats) per group      # stats: activations, when the scorer needs them
        plan   = scope(scores, fraction)             # pure data: which neurons of which group go
        plan.apply(model)                            # physical slice; an emptied adapter is removed
        optimizer = optimizer_factory(trainable)     # parameters were replaced: a fresh optimizer
        train(cycle c)                               # fine-tune

The training step is a callback, ``train_fn(model, optimizer, cycle) -> metrics``, so the engine drives any loop
(prunekit's own, a Lightning module, a hand-written one). Events ``on_cycle_start``, ``on_prune`` and
``on_cycle_end`` take callbacks (``engine.add_callback('on_prune', fn)``).

Under ``torch.distributed`` rank 0 scores and selects, the plan is broadcast, and every rank applies the same one.
``state_dict()`` / ``load_state_dict()`` and ``run(start_cycle=...)`` continue an interrupted run (see resume.py).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .distributed import broadcast_object, is_main
from .graph import Group, adapter_groups
from .params import count_parameters
from .plan import Plan
from .registry import PrunekitError
from .schedule import Schedule, compression
from .scopes import Scope, get_scope
from .scorers import ScoreStats, Scorer, collect_activations, get_scorer, needs_activations, score_groups
from .strategy import Strategy, get_strategy

__all__ = ["Engine", "CycleRecord", "TrainFn"]

TrainFn = Callable[[nn.Module, torch.optim.Optimizer, int], "Mapping[str, Any] | None"]
EVENTS = ("on_cycle_start", "on_prune", "on_cycle_end")


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


@dataclass
class CycleRecord:
    """What happened in one training cycle.

    Attributes:
        cycle: 0 for the first training, then one per prune.
        widths: width of every group (by name; 0 once removed) while this cycle trained.
        sigma: compression sum m / sum n of those widths.
        trainable_params: trainable parameters while this cycle trained.
        metrics: whatever ``train_fn`` returned.
        plan: the prune applied after this cycle's training, if any.
        widths_after: widths after that prune (equal to ``widths`` when there was none).
    """

    cycle: int
    widths: dict[str, int]
    sigma: float
    trainable_params: int
    metrics: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None
    widths_after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "widths": self.widths, "sigma": self.sigma,
                "trainable_params": self.trainable_params, "metrics": self.metrics,
                "plan": None if self.plan is None else self.plan.to_dict(), "widths_after": self.widths_after}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CycleRecord":
        return cls(cycle=d["cycle"], widths=dict(d["widths"]), sigma=d["sigma"],
                   trainable_params=d["trainable_params"], metrics=dict(d["metrics"]),
                   plan=None if d["plan"] is None else Plan.from_dict(d["plan"]), widths_after=dict(d["widths_after"]))


class Engine:
    """Train, then prune-and-fine-tune until the adapters reach ``sigma_target``.

    Args:
        model: a model with prunable groups (e.g. after :func:`~prunekit.adapters.inject_adapters`).
        train_fn: ``train_fn(model, optimizer, cycle) -> metrics`` trains one cycle.
        example_inputs: a batch the model accepts, for tracing the dependency graph.
        strategy: a registered strategy name or a :class:`Strategy` (scorer + scope + mode).
        rho: fraction of neurons removed per prune.
        sigma_target: compression to reach, ``sum m / sum n``.
        scorer, scope, mode: override the strategy's parts (a scorer may be any callable).
        sigma_reference: one-shot runs train as many cycles as an iterative run from this compression.
        optimizer_factory: ``fn(params) -> optimizer``, called at the start of every cycle (default AdamW 1e-3).
        calibration: batches (or a function returning them) for activation-based scorers.
        groups_fn: ``fn(model, example_inputs) -> groups``; default: every adapter's group.
        seed: seeds random scorers.
    """

    def __init__(
            self,
            model: nn.Module,
            train_fn: TrainFn,
            *,
            example_inputs: Any,
            strategy: str | Strategy = "tina",
            rho: float = 0.5,
            sigma_target: float = 512.0,
            scorer: str | Scorer | None = None,
            scope: str | Scope | None = None,
            mode: str | None = None,
            sigma_reference: float = 32.0,
            optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer] = default_optimizer,
            calibration: Iterable | Callable[[], Iterable] | None = None,
            groups_fn: Callable[[nn.Module, Any], list[Group]] = adapter_groups,
            seed: int = 0,
    ):
        strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.model = model
        self.train_fn = train_fn
        self.example_inputs = example_inputs
        self.strategy = strat
        self.scorer = get_scorer(scorer if scorer is not None else strat.scorer)
        self.scope = get_scope(scope if scope is not None else strat.scope)
        self.schedule = Schedule(rho=rho, sigma_target=sigma_target, mode=mode or strat.mode,
                                 sigma_reference=sigma_reference)
        self.optimizer_factory = optimizer_factory
        self.calibration = calibration
        self.groups_fn = groups_fn
        self.generator = torch.Generator().manual_seed(seed)
        self._callbacks: dict[str, list[Callable]] = defaultdict(list)

        # Everything is checked before the first epoch: a bad setting must not cost a training cycle.
        groups = self.groups()
        if not groups:
            raise PrunekitError(f"strategy {strat.name!r}: the model has no prunable groups; inject adapters first "
                                "(prunekit.inject_adapters) or pass groups_fn= for other layers")
        if needs_activations(self.scorer) and calibration is None:
            raise PrunekitError(f"scorer {getattr(self.scorer, '__name__', self.scorer)!r} ranks neurons by their "
                                "activations: pass calibration= (batches of inputs)")
        self.group_names = [g.name for g in groups]
        self.fans = {g.name: g.fan for g in groups}
        self.total_fan = sum(self.fans.values())
        width0 = sum(g.width for g in groups)
        self.prune_after = self.schedule.prune_after(width0, self.total_fan)
        self.cycles = self.schedule.cycles(width0, self.total_fan)
        self.history: list[CycleRecord] = []

    def add_callback(self, event: str, fn: Callable) -> None:
        """``on_cycle_start(engine, cycle)``, ``on_prune(engine, plan)``, ``on_cycle_end(engine, record)``."""
        if event not in EVENTS:
            raise PrunekitError(f"event: unknown {event!r}; allowed: {', '.join(EVENTS)}")
        self._callbacks[event].append(fn)

    def _emit(self, event: str, *args) -> None:
        for fn in self._callbacks[event]:
            fn(self, *args)

    def groups(self) -> list[Group]:
        return self.groups_fn(self.model, self.example_inputs)

    def widths(self, groups: list[Group] | None = None) -> dict[str, int]:
        """Current width of every group the engine started with (0 for a removed one)."""
        live = {g.name: g.width for g in (groups if groups is not None else self.groups())}
        names = getattr(self, "group_names", list(live))
        return {n: live.get(n, 0) for n in names}

    def sigma(self, widths: Mapping[str, int]) -> float:
        return compression(self.total_fan, sum(widths.values()))

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise PrunekitError("nothing to train: every parameter is frozen (see prunekit.mark_trainable)")
        return self.optimizer_factory(params)

    def plan(self, target_width: int, groups: list[Group] | None = None) -> Plan:
        """Score every group and select down to ``target_width`` neurons in total (without touching the model)."""
        groups = groups if groups is not None else self.groups()
        total = sum(g.width for g in groups)
        fraction = 0.0 if total == 0 else (total - target_width) / total
        stats = ScoreStats(generator=self.generator)
        if needs_activations(self.scorer):
            batches = self.calibration() if callable(self.calibration) else self.calibration
            stats.activations = collect_activations(self.model, groups, batches)
        plan = self.scope(score_groups(groups, self.scorer, stats), fraction)
        plan.meta.update(scorer=getattr(self.scorer, "__name__", str(self.scorer)), target_width=target_width)
        return plan

    def prune_to(self, target_width: int, cycle: int | None = None) -> Plan:
        """One prune step: score, select, slice. Returns the applied plan.

        In a distributed run only rank 0 scores and selects (weights are identical on every rank after a DDP step);
        the other ranks receive its plan, so a float tie or a random scorer cannot make them disagree.
        """
        groups = self.groups()
        plan = self.plan(target_width, groups) if is_main() else None
        plan = broadcast_object(plan)
        plan.meta["cycle"] = cycle
        plan.meta["removed_adapters"] = plan.apply(self.model, groups)
        self._emit("on_prune", plan)
        return plan

    def state_dict(self) -> dict[str, Any]:
        """History of the finished cycles (with their plans) and the scorer's generator."""
        return {"history": [r.to_dict() for r in self.history], "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the model must already have the plans of that history applied."""
        self.history = [CycleRecord.from_dict(d) for d in state["history"]]
        self.generator.set_state(state["generator"])

    def run(self, start_cycle: int = 0) -> list[CycleRecord]:
        """Train ``self.cycles`` cycles, pruning per the schedule; returns (and keeps) the history.

        ``start_cycle > 0`` continues a run whose first cycles are in ``self.history`` (see :meth:`load_state_dict`).
        """
        if len(self.history) < start_cycle or not 0 <= start_cycle <= self.cycles:
            raise PrunekitError(f"start_cycle: {start_cycle} needs the history of cycles 0..{start_cycle - 1}; "
                                f"the engine has {len(self.history)} (of {self.cycles} cycles)")
        self.history = self.history[:start_cycle]
        for cycle in range(start_cycle, self.cycles):
            self._emit("on_cycle_start", cycle)
            widths = self.widths()
            record = CycleRecord(cycle=cycle, widths=widths, sigma=self.sigma(widths),
                                 trainable_params=count_parameters(self.model, trainable_only=True))
            metrics = self.train_fn(self.model, self.make_optimizer(), cycle)
            record.metrics = dict(metrics or {})
            if cycle in self.prune_after:
                record.plan = self.prune_to(self.prune_after[cycle], cycle)
            record.widths_after = self.widths()
            self.history.append(record)
            self._emit("on_cycle_end", record)
        return self.history

    @property
    def plans(self) -> list[Plan]:
        return [r.plan for r in self.history if r.plan is not None]

    def __repr__(self) -> str:
        return (f"Engine(strategy={self.strategy.name!r}, scope={getattr(self.scope, '__name__', self.scope)}, "
                f"rho={self.schedule.rho}, sigma_target={self.schedule.sigma_target:g}, mode={self.schedule.mode}, "
                f"groups={len(self.group_names)}, cycles={self.cycles}, sigma0={self.sigma(self.widths()):.4g})")

