"""The iterative pruning engine (TINA, Algorithm 1), independent of any training loop and of what a group is.

::

    train(cycle 0)
    repeat P times:                                  # P is fixed before training starts (see schedule.py)
        groups = groups_fn(model)                    # one trace per prune: adapters, channels, heads ...
        scores = scorer(group, stats) per group      # stats: activations / gradients, when the scorer needs them
        plan   = scope(scores, target=K, limits)     # pure data: exactly K units go (or K chosen to meet params/MACs)
        plan.apply(model)                            # physical slice; policies handle emptied groups
        optimizer = optimizer_factory(trainable)     # parameters were replaced: a fresh optimizer
        train(cycle c)                               # fine-tune

What "done" means is a :class:`~prunekit.budget.search.Budget`: ``sigma`` (TINA: the adapters' compression, the default,
from ``sigma_target``), or a fraction of the model's ``params``, ``macs`` or prunable ``channels`` to remove. For the
ratio budgets each prune removes a fraction ``rho`` of what is left of the measure (after k prunes ``1 - (1 - rho)^k``
is gone) and the last prune lands on the ratio; the cycle count follows from budget and rho before any training.
After every prune the engine measures what was reached (sigma, or the fraction removed) and records it in the
:class:`CycleRecord` and in ``plan.meta['budget']``; a plan that misses its step's target by more than one unit's
worth is refused before it is applied.

The training step is a callback, ``train_fn(model, optimizer, cycle) -> metrics``, so the engine drives any loop
(prunekit's own, a Lightning module, a hand-written one). Events ``on_cycle_start``, ``on_prune`` and
``on_cycle_end`` take callbacks (``engine.add_callback('on_prune', fn)``).

With ``distill=`` (:mod:`prunekit.engine.distill`) the cycles after a prune learn from a frozen teacher, by default
the model as it was just before the first prune: ``train_fn`` is then called with ``teacher=`` (a
:class:`~prunekit.engine.distill.Teacher`, None in the cycles before the first prune) and mixes its loss in
(prunekit's :class:`~prunekit.train.trainer.Trainer` does).

Under ``torch.distributed`` rank 0 scores and selects, the plan is broadcast, and every rank applies the same one.
``state_dict()`` / ``load_state_dict()`` and ``run(start_cycle=...)`` continue an interrupted run (see resume.py).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..budget.search import Budget, count_parameters, mac_weights
from ..budget.selection import check_budget_reachable
from ..budget.uniform import families
from ..core.distributed import broadcast_object, is_main
from .sources import describe_groups_fn, groups_fn_from
from ..core.plan import Plan, input_spec, record_applied
from ..registry import PrunekitError
from .schedule import Schedule, compression, ratio_prunes, ratio_steps
from ..ranking.scopes import Scope, get_scope
from ..core.undo import apply_or_restore, output_shapes
from ..ranking.scorers import ScoreStats, Scorer, get_scorer, needs_activations, needs_gradients, score_groups
from ..ranking.calibration import gather_stats
from .distill import Distill, Teacher, check_takes_teacher, checked_teacher
from .history import CycleRecord, Measure
from .step import select_step, step_goal, step_latency_table
from .strategy import Strategy, get_strategy

__all__ = ["Engine", "TrainFn"]

TrainFn = Callable[[nn.Module, torch.optim.Optimizer, int], "Mapping[str, Any] | None"]
EVENTS = ("on_cycle_start", "on_prune", "on_cycle_end")


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class Engine:
    """Train, then prune-and-fine-tune until the budget is reached (TINA: the adapters reach ``sigma_target``).

    Args:
        model: a model with prunable groups (e.g. after :func:`~prunekit.adapters.inject.inject_adapters`).
        train_fn: ``train_fn(model, optimizer, cycle) -> metrics`` trains one cycle.
        example_inputs: a batch the model accepts, for tracing the dependency graph (and counting MACs).
        strategy: a registered strategy name or a :class:`Strategy` (scorer + scope + mode + the group source it is
            meant for); None: give ``scorer=`` (the scope is then global, the mode iterative).
        rho: fraction removed per prune (of the units for sigma; of what is left of the measure otherwise).
        sigma_target: compression to reach, ``sum m / sum n``: the budget ``Budget.sigma(sigma_target)`` when
            ``budget`` is not given.
        scorer, scope, mode: override the strategy's parts (a scorer may be any callable).
        sigma_reference: one-shot runs train as many cycles as an iterative run from this compression (None: from
            the adapters' compression as given).
        optimizer_factory: ``fn(params) -> optimizer``, called at the start of every cycle (default AdamW 1e-3).
        calibration: batches (or a function returning them) for activation / gradient scorers; ``(x, y)`` pairs for
            Taylor scores.
        groups_fn: ``fn(model, example_inputs) -> groups``, or the name of a registered group source
            (``'adapters'``, ``'backbone'``); default: the strategy's ``groups``. ``prunekit.backbone_groups(...)``
            prunes any model's channels with options.
        seed: seeds random scorers.
        budget: what to reach (:class:`~prunekit.budget.search.Budget`); one of ``budget`` and ``sigma_target``.
        loss_fn: ``loss_fn(outputs, targets)`` for gradient scorers (default cross-entropy).
        check_forward: after every prune run the example inputs through the model; if that fails or the output
            shapes change, restore the model from a copy taken before the prune and raise
            :class:`~prunekit.core.group.UnsupportedModelError`. Default: on, unless every group's policy says its
            removal cannot break the model (``Policy.check_forward = False``: adapters, removed by construction).
        uniform: every prune keeps repeated blocks at one width (:mod:`prunekit.budget.uniform`); default: the
            groups_fn's own ``uniform`` (``backbone_groups(uniform=True)``), else off.
        distill: recover with knowledge distillation (:class:`~prunekit.engine.distill.Distill`: alpha,
            temperature, a teacher model or None for the model before the first prune); ``train_fn`` must take a
            ``teacher`` keyword.
    """

    def __init__(
            self,
            model: nn.Module,
            train_fn: TrainFn,
            *,
            example_inputs: Any,
            strategy: str | Strategy | None = None,
            rho: float = 0.5,
            sigma_target: float | None = None,
            scorer: str | Scorer | None = None,
            scope: str | Scope | None = None,
            mode: str | None = None,
            sigma_reference: float | None = 32.0,
            optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer] = default_optimizer,
            calibration: Iterable | Callable[[], Iterable] | None = None,
            groups_fn: Callable[[nn.Module, Any], list] | str | None = None,
            seed: int = 0,
            budget: Budget | None = None,
            loss_fn: Callable | None = None,
            check_forward: bool | None = None,
            uniform: bool | None = None,
            distill: Distill | None = None,
    ):
        if strategy is None:
            if scorer is None:
                raise PrunekitError("Engine: pass strategy= (a registered name such as 'tina', or a Strategy) or "
                                    "scorer= (with scope= and mode= if not global and iterative)")
            strategy = Strategy(name="custom", scorer=scorer, scope=scope or "global", mode=mode or "iterative")
        strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
        if budget is None and sigma_target is None:
            raise PrunekitError("Engine: pass budget= (Budget.params(0.5), Budget.macs(0.5), Budget.channels(0.5), "
                                "Budget.sigma(64)) or sigma_target= (the adapters' compression to reach)")
        self.budget = budget if budget is not None else Budget.sigma(sigma_target)
        if self.budget.kind == "sigma":
            sigma_target = self.budget.value
        if groups_fn is None:
            groups_fn = strat.groups
            if groups_fn is None:
                raise PrunekitError(f"Engine: strategy {strat.name!r} names no group source; pass groups_fn= "
                                    "('adapters', 'backbone', prunekit.backbone_groups(...) or a function)")
        self.model = model
        self.train_fn = train_fn
        self.example_inputs = example_inputs
        self.strategy = strat
        self.scorer = get_scorer(scorer if scorer is not None else strat.scorer)
        self.scope = get_scope(scope if scope is not None else strat.scope)
        self.schedule = Schedule(rho=rho, mode=mode or strat.mode, sigma_reference=sigma_reference,
                                 **({} if sigma_target is None else {"sigma_target": sigma_target}))
        self.optimizer_factory = optimizer_factory
        self.calibration = calibration
        self.loss_fn = loss_fn
        self.groups_fn = groups_fn_from(groups_fn) if isinstance(groups_fn, str) else groups_fn
        self.uniform = bool(getattr(self.groups_fn, "uniform", False) if uniform is None else uniform)
        self.generator = torch.Generator().manual_seed(seed)
        self.distill = distill
        self.teacher: Teacher | None = None
        if distill is not None:
            check_takes_teacher(train_fn)
        self._callbacks: dict[str, list[Callable]] = defaultdict(list)

        # Everything is checked before the first epoch: a bad setting must not cost a training cycle.
        groups = self.groups()
        if not groups:
            raise PrunekitError(f"strategy {strat.name!r}: the model has no prunable groups; inject adapters first "
                                "(prunekit.inject_adapters) or pass groups_fn= for other layers")
        name = getattr(self.scorer, "__name__", self.scorer)
        if needs_activations(self.scorer) and calibration is None:
            raise PrunekitError(f"scorer {name!r} ranks units by their activations: pass calibration= (batches of "
                                "inputs)")
        if needs_gradients(self.scorer) and calibration is None:
            raise PrunekitError(f"scorer {name!r} ranks units by |w * dL/dw|: pass calibration= ((inputs, targets) "
                                "batches) and, for another loss than cross-entropy, loss_fn=")
        self.group_names = [g.name for g in groups]
        self.original = {g.name: g.width for g in groups}
        self._widths = dict(self.original)
        self.fans = {g.name: g.fan for g in groups}
        self.total_fan = sum(self.fans.values())
        self.measure = Measure(self.budget, model, groups, example_inputs)
        width0 = sum(self.original.values())
        if self.budget.kind == "sigma":
            self.prune_after = self.schedule.prune_after(width0, self.total_fan)
            self.cycles = self.schedule.cycles(width0, self.total_fan)
        else:
            self._check_reachable(groups)
            steps = ratio_steps(self.budget.value, rho)
            if self.schedule.mode == "oneshot":
                self.prune_after, self.cycles = {0: self.budget.value}, ratio_prunes(self.budget.value, rho) + 1
            else:
                self.prune_after, self.cycles = dict(enumerate(steps)), len(steps) + 1
        self.check_forward = (check_forward if check_forward is not None
                              else any(getattr(getattr(g, "policy", None), "check_forward", True) for g in groups))
        self._reference = output_shapes(model, example_inputs) if self.check_forward else None
        if distill is not None and distill.teacher is not None:
            self.set_teacher(distill.teacher)
        self.history: list[CycleRecord] = []

    def set_teacher(self, model: nn.Module) -> Teacher:
        """Use ``model`` (frozen, not copied) as the distillation teacher: a checkpoint of the task, or, when a run
        resumes after its first prune, the model rebuilt as it was before that prune. Its outputs must have the
        model's shapes on the example inputs."""
        if self.distill is None:
            raise PrunekitError("set_teacher: the engine was built without distill=; pass distill=Distill(...)")
        ours = self._reference if self._reference is not None else output_shapes(self.model, self.example_inputs)
        self.teacher = checked_teacher(model, self.distill, ours, self.example_inputs)
        return self.teacher

    @property
    def first_prune(self) -> int | None:
        """The cycle after whose training the first prune comes (None: no prune)."""
        return min(self.prune_after) if self.prune_after else None

    def teacher_for(self, cycle: int) -> Teacher | None:
        """The teacher of cycle ``cycle``: none before the first prune (or without ``distill``)."""
        if self.distill is None or self.first_prune is None or cycle <= self.first_prune:
            return None
        if self.teacher is None:
            raise PrunekitError(f"distill: cycle {cycle} follows the first prune (after cycle {self.first_prune}) "
                                "but the engine has no teacher: a resumed engine needs engine.set_teacher(model as "
                                "it was before the first prune), or pass distill=Distill(teacher=...)")
        return self.teacher

    def _check_reachable(self, groups: list) -> None:
        weights = mac_weights(self.model, self.example_inputs)[1] if self.budget.kind == "macs" else None
        check_budget_reachable(self.budget, groups, self.measure.start, original=self.original, weights=weights,
                               families=self.families(groups), cost=step_latency_table(
                                   self.budget, self.model, self.groups_fn, self.example_inputs, groups, self.original))

    def add_callback(self, event: str, fn: Callable) -> None:
        """``on_cycle_start(engine, cycle)``, ``on_prune(engine, plan)``, ``on_cycle_end(engine, record)``."""
        if event not in EVENTS:
            raise PrunekitError(f"event: unknown {event!r}; allowed: {', '.join(EVENTS)}")
        self._callbacks[event].append(fn)

    def _emit(self, event: str, *args) -> None:
        for fn in self._callbacks[event]:
            fn(self, *args)

    def families(self, groups: list) -> list | None:
        """The tied families of ``groups`` when the engine prunes uniformly (:mod:`prunekit.budget.uniform`)."""
        return families(self.model, groups) if self.uniform else None

    def groups(self) -> list:
        """The model's groups now (one trace)."""
        return self.groups_fn(self.model, self.example_inputs)

    def widths(self, groups: list | None = None) -> dict[str, int]:
        """Width of every group the engine started with (0 for a removed one), as of the last prune; pass ``groups``
        to read them from a fresh discovery instead."""
        if groups is None and hasattr(self, "_widths"):
            return dict(self._widths)
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

    def _stats(self, groups: list) -> ScoreStats:
        batches = self.calibration() if callable(self.calibration) else self.calibration
        return gather_stats(self.model, groups, self.scorer, batches, generator=self.generator, loss_fn=self.loss_fn)

    def plan(self, target: float, groups: list | None = None) -> Plan:
        """Score every group and select down to ``target`` (without touching the model): the total width for a
        sigma budget, else the fraction of the measure removed once this prune is done."""
        groups = groups if groups is not None else self.groups()
        scores = score_groups(groups, self.scorer, self._stats(groups))
        goal = step_goal(self.budget, self.measure, target, groups)
        plan, done, tol = select_step(self.budget, self.measure, self.model, self.groups_fn, self.example_inputs,
                                      groups, scores, self.scope, goal, original=self.original,
                                      families=self.families(groups))
        plan.meta.update(scorer=getattr(self.scorer, "__name__", str(self.scorer)))
        if self.budget.kind == "sigma":
            plan.meta["target_width"] = int(target)
        source = describe_groups_fn(self.groups_fn)
        if source is not None:
            plan.meta["groups"] = source
        with contextlib.suppress(PrunekitError):  # inputs that are not tensors: save_pruned then asks for a batch
            plan.meta["example_inputs"] = input_spec(self.example_inputs)
        plan.meta["budget"] = {"kind": self.budget.kind, "target": target, "goal": goal, "planned": done,
                               "tolerance": tol}
        return plan

    def prune_to(self, target: float, cycle: int | None = None) -> Plan:
        """One prune step: trace once, score, select, slice, measure. Returns the applied plan.

        In a distributed run only rank 0 scores and selects (weights are identical on every rank after a DDP step);
        the other ranks receive its plan, so a float tie or a random scorer cannot make them disagree.
        """
        groups = self.groups()
        plan = self.plan(target, groups) if is_main() else None
        plan = broadcast_object(plan)
        plan.meta["cycle"] = cycle
        self._apply(plan, groups)
        record_applied(self.model, plan)
        after = plan.widths_after()
        for name in self.group_names:
            if name in after:
                self._widths[name] = after[name]
        now = self.measure.now(self._widths)
        reached = self.measure.value(now)
        plan.meta.setdefault("budget", {"kind": self.budget.kind, "target": target})
        plan.meta["budget"]["reached"] = reached
        if self.budget.kind != "sigma":
            plan.meta["budget"]["measure"] = now
        self._emit("on_prune", plan)
        return plan

    def _apply(self, plan: Plan, groups: list) -> None:
        """Slice the model; with ``check_forward``, undo and raise by name if the pruned model no longer runs."""
        if not self.check_forward:
            plan.apply(self.model, groups)
            return
        apply_or_restore(self.model, plan, groups, self.example_inputs, self._reference)

    def state_dict(self) -> dict[str, Any]:
        """History of the finished cycles (with their plans) and the scorer's generator."""
        return {"history": [r.to_dict() for r in self.history], "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the model must already have (or be about to get) the plans of that history."""
        self.history = [CycleRecord.from_dict(d) for d in state["history"]]
        self.generator.set_state(state["generator"])
        if self.history:
            self._widths = {n: self.history[-1].widths_after.get(n, 0) for n in self.group_names}

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
            extra = {} if self.distill is None else {"teacher": self.teacher_for(cycle)}
            metrics = self.train_fn(self.model, self.make_optimizer(), cycle, **extra)
            record.metrics = dict(metrics or {})
            if cycle in self.prune_after:
                if self.distill is not None and self.teacher is None:  # the model as it is before the first prune
                    self.teacher = Teacher.snapshot(self.model, self.distill)
                record.plan = self.prune_to(self.prune_after[cycle], cycle)
                record.reached = record.plan.meta["budget"]["reached"]
            record.widths_after = self.widths()
            self.history.append(record)
            self._emit("on_cycle_end", record)
        return self.history

    @property
    def plans(self) -> list[Plan]:
        return [r.plan for r in self.history if r.plan is not None]

    def __repr__(self) -> str:
        return (f"Engine(strategy={self.strategy.name!r}, scope={getattr(self.scope, '__name__', self.scope)}, "
                f"rho={self.schedule.rho}, budget={self.budget}, mode={self.schedule.mode}, "
                f"groups={len(self.group_names)}, cycles={self.cycles}, sigma0={self.sigma(self.widths()):.4g})")

