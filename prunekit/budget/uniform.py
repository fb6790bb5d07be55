"""Uniform ("isomorphic") pruning: repeated blocks keep one width, so the model's own config can describe it.

A **family** is a set of groups tied together: every step removes ``units`` units from each member at once, so the
members' widths move in lockstep. :func:`families` forms them from the groups:

- **repeated blocks** (the default rule): groups of the same kind and width whose names differ only in their index
  components (``blocks.0.mlp.fc1`` ... ``blocks.11.mlp.fc1``; ``model.layers.*.self_attn``; ``layer2.*.conv1``) are
  one family, one unit per step each: every block keeps the same MLP width, the same number of (key/value) heads;
- **constructor ties** registered per model class (:func:`~prunekit.groups.ties.register_ties`), where a library's
  constructor derives one width from another: timm's ConvNeXt builds every block's MLP as ``4 x`` its stage's
  width, so a stage's stream channels and its blocks' MLP neurons form one family, 1 and 4 units per step;
- every other group is a family of its own (it prunes as it would without ``uniform``), except in a model whose
  widths a config describes (:func:`~prunekit.groups.ties.register_config_described`: transformers models), where
  such a group keeps its width: a config has no field for one layer's width (BERT's pooler is ``hidden_size`` wide,
  whatever happens).

**Which units go.** Unit ``j`` of one block and unit ``j`` of another have nothing in common (a block's hidden units
can be permuted without changing the model), so summing scores by index would keep or drop units for no reason.
The family ranks *rank positions* instead: each member sorts its own scores, and step ``t`` of the family is the
members' ``t``-th lowest units (``units`` of them per member); its score is the **mean** of those units' scores, so a
step of a 12-block family competes with a single channel on the same scale, and a family of one is plain global
pruning. Steps are ranked by the same scope and the same budget search (:func:`~prunekit.budget.selection.select_plan`)
as free pruning, with the cost of a step the exact cost of all its units together; then every member removes its own
lowest-scored units. The budget is met within one step's worth (a whole family's step for a tied family).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..core.plan import Plan
from ..groups.ties import CONFIG_DESCRIBED, TIES
from ..ranking.scopes import Limit

__all__ = ["Family", "families", "family_problem", "FamilyCost", "UnitCount", "family_scores", "family_limits",
           "expand", "describe"]

_NUMBER = re.compile(r"(?:(?<=\.)|^)\d+(?=\.|$)")  # a whole dotted component: blocks.3.mlp, not fc1


@dataclass(frozen=True)
class Family:
    """Groups whose widths move together: one step removes ``units`` units from each member.

    Attributes:
        name: the family's name: the members' name with index components as ``*`` (``blocks.*.mlp.fc1``), a tied
            family's first member with `` (tied)``, a single group's own name.
        members: ``(group name, units per step)``, in the groups' order.
        steps: the family's width in steps (every member's width is ``steps * units``).
        fixed: the family keeps its width (a lone group of a config-described model).
    """

    name: str
    members: tuple[tuple[str, int], ...]
    steps: int
    fixed: bool = False

    @property
    def units_per_step(self) -> int:
        return sum(u for _, u in self.members)


def family_problem(widths: Mapping[str, int], members: Iterable[tuple[str, int]]) -> str | None:
    """Why ``members`` cannot be tied (None when they can): each width must be the same multiple of its units."""
    ratios = {n: widths[n] / u for n, u in members}
    if len(set(ratios.values())) > 1 or any(widths[n] % u for n, u in members):
        return "widths are not the same multiple of the units per step: " + ", ".join(
            f"{n}: {widths[n]} / {u}" for n, u in members)
    return None


def families(model: nn.Module | None, groups: list) -> list[Family]:
    """The groups' families: registered constructor ties, then repeated blocks, then each remaining group alone
    (module docstring); the order follows the groups'."""
    widths = {g.name: g.width for g in groups}
    kinds = {g.name: getattr(g, "kind", "group") for g in groups}
    taken: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
    if model is not None:
        for cls, rule in TIES:
            if isinstance(model, cls):
                for members in rule(model, groups):
                    members = tuple((n, int(u)) for n, u in members if n in widths and n not in taken)
                    if len(members) > 1 and family_problem(widths, members) is None:
                        name = members[0][0] + " (tied)"  # a group is in one family: unique
                        for n, _ in members:
                            taken[n] = (name, members)
    pattern: dict[tuple, list[str]] = {}
    for g in groups:
        if g.name not in taken:
            pattern.setdefault((kinds[g.name], _NUMBER.sub("*", g.name), widths[g.name]), []).append(g.name)
    shared = [key for (_, key, _), names in pattern.items() if len(names) > 1]
    for (_, key, width), names in pattern.items():
        members = tuple((n, 1) for n in names)
        name = names[0] if len(names) == 1 else key if shared.count(key) == 1 else f"{key} (width {width})"
        for n in names:
            taken[n] = (name, members)
    described = model is not None and any(fn(model) for fn in CONFIG_DESCRIBED)
    out, seen = [], set()
    for g in groups:
        name, members = taken[g.name]
        if name in seen:
            continue
        seen.add(name)
        first, units = members[0]
        out.append(Family(name, members, widths[first] // units, fixed=described and len(members) == 1))
    return out


def family_scores(fams: list[Family], scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One score per step of every family: the mean of the members' ``t``-th lowest units (module docstring)."""
    out = {}
    for f in fams:
        if len(f.members) == 1 and f.members[0][1] == 1:
            out[f.name] = scores[f.members[0][0]]
            continue
        total = torch.zeros(f.steps, dtype=torch.float64)
        for name, units in f.members:
            ranked = torch.sort(scores[name].double().reshape(-1).cpu(), stable=True).values
            total += ranked[: f.steps * units].reshape(f.steps, units).sum(1)
        out[f.name] = (total / f.units_per_step).float()
    return out


def family_limits(fams: list[Family], limits: Mapping[str, Limit]) -> dict[str, Limit]:
    """A family's lowest width and step rounding (in steps) from its members' limits."""
    out = {}
    for f in fams:
        lowest, round_to = 0, 1
        for name, units in f.members:
            lim = limits.get(name, Limit())
            lowest = max(lowest, -(-lim.lowest // units))
            r = lim.round_to // math.gcd(lim.round_to, units)
            round_to = round_to * r // math.gcd(round_to, r)
        out[f.name] = Limit(f.steps if f.fixed else min(lowest, f.steps), round_to)
    return out


def _member_counts(fams: list[Family], counts: Mapping[str, int]) -> dict[str, int]:
    by_name = {f.name: f for f in fams}
    out: dict[str, int] = {}
    for name, k in counts.items():
        for member, units in by_name[name].members:
            out[member] = k * units
    return out


class FamilyCost:
    """A cost model over families: ``removed({family: steps})`` is the member cost model's exact cost of all the
    members' units together."""

    def __init__(self, cost: Any, fams: list[Family]):
        self.cost, self.fams = cost, fams

    def removed(self, counts: Mapping[str, int]) -> float:
        return self.cost.removed(_member_counts(self.fams, counts))


class UnitCount:
    """The cost model of a unit budget (sigma, channels): every unit costs one."""

    def removed(self, counts: Mapping[str, int]) -> float:
        return float(sum(counts.values()))


def expand(plan: Plan, fams: list[Family], scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> Plan:
    """The member plan of a family plan: each member removes its own lowest-scored units (``steps x units``)."""
    counts = _member_counts(fams, {k: len(v) for k, v in plan.remove.items()})
    remove = {}
    for name, k in counts.items():
        if k:
            remove[name] = torch.argsort(scores[name].float().reshape(-1).cpu(), stable=True)[:k].tolist()
    meta = dict(plan.meta)
    meta["uniform"] = {f.name: [n for n, _ in f.members] for f in fams if len(f.members) > 1}
    meta["removed_units"] = sum(counts.values())
    return Plan(widths=dict(widths), remove=remove, meta=meta)


def family_plan_trial(trial: Callable[[Plan], float] | None, fams: list[Family], scores: Mapping[str, torch.Tensor],
                      widths: Mapping[str, int]) -> Callable[[Plan], float] | None:
    """``trial`` (``fn(member plan) -> amount removed``) for family plans."""
    if trial is None:
        return None
    return lambda plan: trial(expand(plan, fams, scores, widths))


def describe(fams: list[Family]) -> dict[str, Any]:
    """The tied families, for ``plan.meta``."""
    out: dict[str, Any] = {f.name: {"members": [n for n, _ in f.members], "units": [u for _, u in f.members],
                                    "steps": f.steps} for f in fams if len(f.members) > 1}
    kept = [f.name for f in fams if f.fixed]
    if kept:
        out["kept (no config field)"] = kept
    return out
