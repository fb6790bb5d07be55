"""Latency as a budget: a per-group lookup table of measured latency (measured by :mod:`prunekit.budget.meter`).

"Fewer MACs but no real speed-up": a MACs budget counts arithmetic, but a device runs some layers faster per MAC than
others (depthwise convolutions, tiny matrices, widths that are not a multiple of the vector or tensor-core width).
A ``latency`` budget removes a fraction of the model's *measured* forward time on the device the model is on, at the
batch size and thread count of a :class:`LatencyMeter` (HALP, Shen et al. 2022, does this for CNNs with a per-layer
latency table).

How the budget search uses it, as it uses the MACs per parameter for a MACs budget:

1. :func:`latency_table` prunes a copy of the model one group at a time to a few widths (a quarter, half, three
   quarters and all of what the group may lose, on its ``round_to`` grid) and times the modules the prune changed
   (a conv, its norm and the next conv; an attention module as a whole), each called alone on the inputs it gets in
   the pruned model. A group's entry is the time saved at each width; between them the table interpolates linearly.
2. The selection searches the number of units whose table cost meets the goal (bisection, as for parameters), then
   measures the whole pruned copy and moves the goal by the error (what the table misses: element-wise ops,
   groups that shrink the same layer from both sides), up to four rounds, keeping the closest.
3. After pruning, the model itself is measured; a plan records what the table predicted and what was measured.

Every measurement a budget compares is taken side by side with a frozen copy of the model as it was when pruning began
(:meth:`LatencyMeter.ratio`: one call of each per round, the median of the per-round ratios): on a shared machine the
forward time of one model drifts by 10 % and more between minutes, the ratio of two interleaved ones much less.

The table is cached per (model structure, device, batch, threads, meter settings) under
``$PRUNEKIT_CACHE/latency`` (default ``~/.cache/prunekit/latency``), so a second run on the same model measures
nothing. A meter with its own ``timer`` (a deterministic clock: tests, simulated devices) is never cached.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..atomic import atomic_write
from ..core.policy import removal_steps
from ..core.undo import rekey_graph, restore, snapshot
from .meter import LatencyMeter, _device, _tensors

__all__ = ["LatencyTable", "latency_table", "cache_dir", "TABLE_FORMAT"]

TABLE_FORMAT = "prunekit.latency/1"
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of what a group may lose: the widths its table entry is measured at


class LatencyTable:
    """Per group, the latency saved (seconds) by removing ``r`` units, measured at a few ``r``; linear between.

    ``removed({group: r})`` is the sum over groups: the cost model of a latency budget (what the search asks of
    :class:`~prunekit.budget.search.CostModel` for parameters). ``total``: the seconds of the whole model measured
    with it; ``floor_fraction``: the fraction of its time that goes with every group at its lowest width (measured
    side by side with the model; None when those widths do not run together).
    """

    def __init__(self, points: Mapping[str, list[tuple[int, float]]], total: float,
                 floor_fraction: float | None = None):
        self.points = {k: sorted((int(r), float(s)) for r, s in v) for k, v in points.items()}
        self.total, self.floor_fraction = float(total), floor_fraction

    def saved(self, name: str, r: int) -> float:
        pts = self.points.get(name)
        if not pts or r <= 0:
            return 0.0
        prev = (0, 0.0)
        for x, y in pts:
            if r <= x:
                return prev[1] + (y - prev[1]) * (r - prev[0]) / max(1, x - prev[0])
            prev = (x, y)
        x, y = pts[-1]  # beyond the last measured width: the last slope
        return y + (y / x if x else 0.0) * (r - x)

    def removed(self, counts: Mapping[str, int]) -> float:
        return sum(self.saved(n, r) for n, r in counts.items() if r)

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "total": self.total, "floor_fraction": self.floor_fraction,
                "points": {k: [list(p) for p in v] for k, v in self.points.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        if d.get("format") != TABLE_FORMAT:
            raise ValueError(f"not a latency table ({d.get('format')!r})")
        return cls({k: [tuple(p) for p in v] for k, v in d["points"].items()}, d["total"], d.get("floor_fraction"))


def cache_dir() -> Path:
    """``$PRUNEKIT_CACHE/latency``, default ``~/.cache/prunekit/latency``."""
    return Path(os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit")).expanduser() / "latency"


def latency_table(model: nn.Module, groups_fn: Callable, example_inputs: Any, meter: LatencyMeter,
                  limits: Mapping[str, Any]) -> LatencyTable:
    """The lookup table of ``model``'s groups (as ``groups_fn`` finds them), measured on a copy (the model is not
    touched), or read from the cache. ``limits``: per group name, its :class:`~prunekit.ranking.scopes.Limit`."""
    key = None
    if meter.cache and meter.timer is None:
        key = _cache_key(model, example_inputs, meter, limits)
        cached = _read_cache(key)
        if cached is not None:
            return cached
    table = _measure_table(model, groups_fn, example_inputs, meter, limits)
    if key is not None:
        path = cache_dir() / f"{key}.json"
        with contextlib.suppress(OSError):  # a read-only home: measure again next time
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(table.to_dict())))
    return table


@torch.no_grad()
def _measure_table(model: nn.Module, groups_fn: Callable, example_inputs: Any, meter: LatencyMeter,
                   limits: Mapping[str, Any]) -> LatencyTable:
    probe = copy.deepcopy(model)
    probe.eval()
    with torch.enable_grad():  # tracing needs autograd
        groups = [g for g in groups_fn(probe, example_inputs) if g.name in limits]
    args, kwargs = meter.batch(example_inputs)
    dgs = {id(g._dg): g._dg for g in groups if getattr(g, "_dg", None) is not None}
    points: dict[str, list[tuple[int, float]]] = {}
    with meter.threads_set():
        total = meter.call_seconds(probe, args, kwargs)
        base: dict[int, float] = {}  # full-width seconds of a module (summed over its calls), by id
        for g in groups:
            steps = removal_steps(g.width, *limits[g.name])
            if steps[-1] == 0:
                continue
            chosen = sorted({min(steps, key=lambda s: abs(s - f * steps[-1])) for f in FRACTIONS} - {0})
            entry = []
            for r in chosen:
                try:
                    entry.append((r, _saving(probe, g, r, base, dgs, args, kwargs, meter)))
                except Exception:  # noqa: BLE001 - a width this copy cannot run at: the table stops before it
                    break
            points[g.name] = _monotone(entry)
        floor = _floor_fraction(model, probe, groups, limits, dgs, meter, example_inputs)
    return LatencyTable(points, total, floor)


def _saving(probe: nn.Module, g: Any, r: int, base: dict[int, float], dgs: dict, args: tuple, kwargs: dict,
            meter: LatencyMeter) -> float:
    """Seconds saved by removing ``r`` units of ``g`` (its last ones): the modules the prune changes, timed on the
    inputs they get in the pruned copy, against their full-width times (``base``, filled on first sight)."""
    gone = list(range(g.width - r, g.width))
    snap = snapshot(probe)
    try:
        g.prune(gone)
        changed = _changed(probe, snap)
        missing = [m for m in changed if id(m) not in base]
        if missing:  # their full-width times, on the inputs of the unpruned copy
            _undo(dgs, snap, probe)
            base.update(_time_modules(probe, missing, args, kwargs, meter))
            snap = snapshot(probe)
            g.prune(gone)
        now = _time_modules(probe, changed, args, kwargs, meter)
    finally:
        _undo(dgs, snap, probe)
    return sum(base[i] - t for i, t in now.items())


def _floor_fraction(model, probe, groups, limits, dgs, meter, example_inputs) -> float | None:
    """The fraction of the time saved with every group at its lowest width (what the budget can reach at most),
    the copy so pruned and the model measured side by side."""
    snap = snapshot(probe)
    try:
        for g in groups:
            r = removal_steps(g.width, *limits[g.name])[-1]
            if r:
                g.prune(list(range(g.width - r, g.width)))
        return 1.0 - meter.ratio(probe, model, example_inputs)
    except Exception:  # noqa: BLE001 - groups that cannot all go at once: the table's own estimate stands
        return None
    finally:
        _undo(dgs, snap, probe)


def _undo(dgs: dict, snap, model: nn.Module) -> None:
    for dg in dgs.values():
        rekey_graph(dg, snap)
    restore(model, snap)


def _changed(model: nn.Module, snap) -> list[nn.Module]:
    """The outermost modules whose own tensors or plain attributes a prune changed (an attention module as a whole,
    a conv and its norm as themselves)."""
    changed = []
    for m, state in snap:
        now = m.__dict__
        tensors = any(now[k].get(n) is not t for k in ("_parameters", "_buffers") for n, t in state[k].items())
        attrs = any(not isinstance(v, (dict, list, set, nn.Module, torch.Tensor)) and now.get(k) != v
                    for k, v in state.items() if not k.startswith("_"))
        if tensors or attrs:
            changed.append(m)
    inner = {id(c) for m in changed for c in m.modules() if c is not m}
    return [m for m in changed if id(m) not in inner]


def _time_modules(model: nn.Module, modules: list[nn.Module], args: tuple, kwargs: dict,
                  meter: LatencyMeter) -> dict[int, float]:
    """Seconds of each of ``modules`` on the inputs it gets in one forward of ``model`` (all its calls summed)."""
    calls: dict[int, list[tuple[tuple, dict]]] = {id(m): [] for m in modules}

    def hook(module, a, kw):
        calls[id(module)].append((_clone(a), _clone(kw)))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {id(m): sum(meter.call_seconds(m, a, kw) for a, kw in calls[id(m)]) for m in modules}


def _monotone(entry: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Savings never shrink as more units go (a noisy measurement can say so; the search needs a monotone cost)."""
    out, best = [], 0.0
    for r, s in entry:
        best = max(best, s)
        out.append((r, best))
    return out


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _cache_key(model: nn.Module, example_inputs: Any, meter: LatencyMeter, limits: Mapping[str, Any]) -> str:
    args, kwargs = meter.batch(example_inputs)
    device = _device(args, kwargs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}"
    structure = [(n, type(m).__qualname__, sorted((k, tuple(p.shape)) for k, p in m.named_parameters(recurse=False)))
                 for n, m in model.named_modules()]
    inputs = [(tuple(t.shape), str(t.dtype)) for t in _tensors((args, kwargs))]
    blob = json.dumps([TABLE_FORMAT, torch.__version__, str(device), name, meter.describe(), structure, inputs,
                       sorted((k, list(v)) for k, v in limits.items())], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_cache(key: str) -> LatencyTable | None:
    path = cache_dir() / f"{key}.json"
    try:
        return LatencyTable.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
