"""A pruning plan: which neurons of which group go, as plain data.

Selection produces a :class:`Plan`; only :meth:`Plan.apply` touches the model. Plans serialise to JSON and replay on a
fresh model built the same way (:func:`replay`), like torch-pruning's pruning history but keyed by group name.

What an emptied group means is the group's business: :meth:`Plan.apply` calls each policy's ``on_empty`` hook (the
adapter policy replaces the wrapper by its sub-layer) and records what it removed in ``meta['removed']`` and, per
kind, ``meta['removed_<kind>s']`` (``removed_adapters``). ``meta['groups']`` names how the groups were found (a
registered group source and its config), so :func:`replay` can find them again on a fresh model, and
``meta['structure']`` what slicing changed, module by module (:mod:`prunekit.core.structure`), so a fresh model can be
resized to it without finding any group.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .group import groups_by_name
from .policy import policy_of
from .structure import changes, snapshot
from ..atomic import atomic_write
from ..registry import PrunekitError

# Plans written before group sources were recorded were all adapter plans (TINA runs).

__all__ = ["Plan", "applied_plans", "record_applied", "input_spec", "inputs_from_spec"]

# model -> plans applied to it by prune(), the engine or replay(); weak, so nothing is written on the model and a
# discarded model takes its record with it
_APPLIED: "weakref.WeakKeyDictionary[nn.Module, list[Plan]]" = weakref.WeakKeyDictionary()


def record_applied(model: nn.Module, plan: "Plan") -> None:
    """Remember that ``plan`` was applied to ``model`` (see :func:`applied_plans`)."""
    _APPLIED.setdefault(model, []).append(plan)


def applied_plans(model: nn.Module) -> list["Plan"]:
    """Plans applied to ``model`` by :func:`~prunekit.engine.oneshot.prune`, the engine or :func:`replay`, in order."""
    return list(_APPLIED.get(model, []))


AFTER_APPLY: list[Callable[[nn.Module], Any]] = []
"""``fn(model)`` run after every applied plan, to bring what a library derives from the widths in line (a
transformers model's ``config``: :func:`register_after_apply`)."""


def register_after_apply(fn: Callable[[nn.Module], Any]) -> Callable[[nn.Module], Any]:
    """Run ``fn(model)`` after every :meth:`Plan.apply` (once per function, however often it is registered); ``fn``
    must leave any model it does not recognise alone."""
    if fn not in AFTER_APPLY:
        AFTER_APPLY.append(fn)
    return fn


@dataclass
class Plan:
    """Units (neurons, channels, heads) to remove per group.

    Attributes:
        widths: group name -> width n before the plan (also names every group the plan was made for).
        remove: group name -> sorted indices (in ``0..n-1``) to remove; a group may lose all of them.
        meta: free-form provenance (cycle, scorer, scope, fraction ...), saved with the plan.
    """

    widths: dict[str, int]
    remove: dict[str, list[int]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name, idxs in self.remove.items():
            if name not in self.widths:
                raise PrunekitError(f"plan removes neurons of {name!r}, which is not among its groups")
            n = self.widths[name]
            if len(set(idxs)) != len(idxs) or any(not 0 <= i < n for i in idxs):
                raise PrunekitError(f"plan for {name!r}: indices must be distinct and in [0, {n}), got {idxs}")
        self.remove = {k: sorted(int(i) for i in v) for k, v in self.remove.items()}

    def keep(self, name: str) -> list[int]:
        drop = set(self.remove.get(name, ()))
        return [i for i in range(self.widths[name]) if i not in drop]

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.remove.values())

    def widths_after(self) -> dict[str, int]:
        return {k: n - len(self.remove.get(k, ())) for k, n in self.widths.items()}

    def emptied(self) -> list[str]:
        return [k for k, n in self.widths_after().items() if n == 0 and self.widths[k] > 0]

    def apply(self, model: nn.Module, groups: Iterable[Any] | Mapping[str, Any]) -> list[str]:
        """Slice the model; returns what the groups' policies removed because a group lost every unit (for adapters:
        the emptied adapters, e.g. ``['blocks.0.attn.adapter']``), also recorded in ``meta``.

        Every group is checked against the model before anything is cut, so a stale plan changes nothing; a plan that
        would empty a group whose policy keeps ``min_width >= 1`` units is refused the same way.
        """
        by_name = dict(groups) if isinstance(groups, Mapping) else groups_by_name(groups)
        for name, n in self.widths.items():
            if name not in by_name:
                raise PrunekitError(f"plan names group {name!r}, which the model does not have "
                                    f"(it has {len(by_name)} groups, e.g. {sorted(by_name)[:3]})")
            if by_name[name].width != n:
                raise PrunekitError(f"plan expects group {name!r} to have {n} units, the model has "
                                    f"{by_name[name].width}; plans apply in the order they were made")
        for name in self.emptied():
            min_width, _, _, on_empty = policy_of(by_name[name])
            if min_width > 0 or on_empty is None:
                raise PrunekitError(f"plan removes every unit of group {name!r} (kind {by_name[name].kind!r}), whose "
                                    f"policy keeps min_width={min_width}; allowed: at most "
                                    f"{self.widths[name] - min_width} of its {self.widths[name]}")
        before = snapshot(model)
        for name, idxs in self.remove.items():
            if idxs:
                by_name[name].prune(idxs)
        removed: list[str] = []
        hooks: dict[int, tuple[Any, str, list[str]]] = {}
        for name in self.emptied():
            _, _, _, on_empty = policy_of(by_name[name])
            hooks.setdefault(id(on_empty), (on_empty, by_name[name].kind, []))[2].append(name)
        by_kind: dict[str, list[str]] = {}
        for on_empty, kind, names in hooks.values():
            gone = list(on_empty(model, names))
            removed += gone
            by_kind.setdefault(kind, []).extend(gone)
        kinds = {getattr(by_name[k], "kind", "group") for k in self.widths
                 if policy_of(by_name[k])[3] is not None}
        for kind in kinds:
            self.meta[f"removed_{kind}s"] = by_kind.get(kind, [])
        self.meta["removed"] = removed
        for sync in AFTER_APPLY:
            sync(model)
        self.meta["structure"] = changes(before, model)
        return removed

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "groups": {k: {"width": n, "remove": self.remove.get(k, [])}
                                              for k, n in self.widths.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        try:
            groups = d["groups"]
            return cls(widths={k: int(v["width"]) for k, v in groups.items()},
                       remove={k: list(v["remove"]) for k, v in groups.items() if v["remove"]},
                       meta=dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise PrunekitError(f"not a prunekit plan ({type(e).__name__}: {e})") from None

    @staticmethod
    def save_all(plans: Iterable["Plan"], path: str | Path) -> None:
        """Write plans to ``path`` as JSON atomically (temp file + rename)."""
        text = json.dumps({"format": "prunekit.plan/1", "plans": [p.to_dict() for p in plans]}, indent=1)
        atomic_write(path, lambda tmp: tmp.write_text(text))

    @staticmethod
    def load_all(path: str | Path) -> list["Plan"]:
        d = json.loads(Path(path).read_text())
        if not isinstance(d, dict) or "plans" not in d:
            raise PrunekitError(f"{path}: not a prunekit plan file (no 'plans' key)")
        return [Plan.from_dict(p) for p in d["plans"]]


def input_spec(x: Any) -> Any:
    """JSON description of example inputs (shapes and dtypes of a tensor, or a list / dict of them)."""
    if isinstance(x, torch.Tensor):
        return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
    if isinstance(x, (list, tuple)):
        return {"list": [input_spec(v) for v in x]}
    if isinstance(x, dict):
        return {"dict": {str(k): input_spec(v) for k, v in x.items()}}
    raise PrunekitError(f"example_inputs: expected a tensor, or a list / dict of tensors, got {type(x).__name__}")


def inputs_from_spec(spec: Any) -> Any:
    """Zeros shaped like :func:`input_spec` describes (tracing needs shapes only)."""
    if "shape" in spec:
        return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
    if "list" in spec:
        return [inputs_from_spec(v) for v in spec["list"]]
    return {k: inputs_from_spec(v) for k, v in spec["dict"].items()}
