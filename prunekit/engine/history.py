"""What an engine run remembers: one :class:`CycleRecord` per training cycle, and the budget's :class:`Measure`.

The history serialises to plain data (``to_dict`` / ``from_dict``), so a resumed run gets it back exactly; the measure
is what the budget counts on the model (units, parameters or MACs) and its value (sigma, or the fraction removed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from ..budget.search import Budget
from ..budget.selection import measure_now
from ..core.plan import Plan
from .schedule import compression

__all__ = ["CycleRecord", "Measure"]


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
        reached: the budget's value measured after that prune (sigma, or the fraction of params / MACs / channels
            removed so far); None when there was no prune.
    """

    cycle: int
    widths: dict[str, int]
    sigma: float
    trainable_params: int
    metrics: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None
    widths_after: dict[str, int] = field(default_factory=dict)
    reached: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "widths": self.widths, "sigma": self.sigma,
                "trainable_params": self.trainable_params, "metrics": self.metrics,
                "plan": None if self.plan is None else self.plan.to_dict(), "widths_after": self.widths_after,
                "reached": self.reached}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CycleRecord":
        return cls(cycle=d["cycle"], widths=dict(d["widths"]), sigma=d["sigma"],
                   trainable_params=d["trainable_params"], metrics=dict(d["metrics"]),
                   plan=None if d["plan"] is None else Plan.from_dict(d["plan"]), widths_after=dict(d["widths_after"]),
                   reached=d.get("reached"))


class Measure:
    """A budget's measure on one model: the starting value, the value now, what a plan would remove. A latency is
    measured side by side with a frozen copy of the model as it started (``reference``)."""

    def __init__(self, budget: Budget, model: nn.Module, groups: list, example_inputs: Any):
        self.budget, self.model, self.example_inputs = budget, model, example_inputs
        self.total_fan = sum(g.fan for g in groups)
        self.units0 = sum(g.width for g in groups)
        self.reference = None
        self.start = self.now(groups)
        if budget.kind == "latency":  # later measurements are taken side by side with the model as it starts
            self.reference = (budget.meter.reference(model), self.start)

    def now(self, groups_or_widths: Any) -> float:
        """Units kept (sigma, channels), parameters, MACs or measured seconds (latency) of the model as it is."""
        return measure_now(self.budget.kind, self.model, groups_or_widths, self.example_inputs, self.budget.meter,
                           self.reference)

    def value(self, now: float) -> float:
        """The budget's value for a measure: sigma, or the fraction removed."""
        if self.budget.kind == "sigma":
            return compression(self.total_fan, round(now))
        return 1.0 - now / self.start if self.start else 0.0
