"""What slicing changed in a model's structure, as data, and the same change made again without tracing.

A plan's :meth:`~prunekit.core.plan.Plan.apply` compares the model before and after and records, per module, what
changed (``plan.meta['structure']``)::

    {"tensors": {"blocks.0.mlp.fc1": {"weight": [[768, 192], [384, 192]], "bias": [[768], [384]]}, ...},
     "attrs":   {"blocks.0.mlp.fc1": {"out_features": 384}, "blocks.0.attn": {"num_heads": 2}, ...},
     "moved":   {"blocks.3.attn": "blocks.3.attn.base_layer"},          # a module now lives elsewhere
     "config":  {"intermediate_size": 1024}}                            # the model's config (transformers)

Each tensor entry is ``[shape before, shape after]``; attributes are the plain values (numbers, strings, tuples) of
the module's ``__dict__`` that changed, so a library's cached sizes (``num_heads``, ``all_head_size``, ``split_size``,
``in_features``, an LSTM's ``hidden_size``) travel with the shapes. :func:`resize` makes the same changes on a freshly
built, unpruned model: moves, attributes, config, then every recorded tensor becomes an empty tensor of its new shape
(a parameter shared by two modules stays shared), ready for ``load_state_dict(strict=True)``. That is how
:func:`~prunekit.io.pruned.load_pruned` loads without tracing; a change it cannot describe as data (a module that
did not exist before the plan) marks the record ``replayable: False``, and loading traces and replays instead.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..registry import PrunekitError

__all__ = ["Snapshot", "snapshot", "changes", "resize", "check_resizable", "PLAIN"]

PLAIN = (int, float, bool, str, type(None))


def _plain(v: Any) -> bool:
    if isinstance(v, PLAIN):
        return True
    return isinstance(v, (tuple, list)) and all(_plain(x) for x in v)


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, (tuple, list)) else v


def _attrs(m: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(m).items() if k != "training" and _plain(v)}


def _tensors(m: nn.Module) -> dict[str, tuple[int, ...]]:
    out = {k: tuple(p.shape) for k, p in m._parameters.items() if p is not None}
    out.update({k: tuple(b.shape) for k, b in m._buffers.items() if b is not None})
    return out


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if not callable(to_dict):
        return None
    return {k: v for k, v in to_dict().items() if _plain(v)}


class Snapshot:
    """The model's modules (by object), their plain attributes and tensor shapes, and its config, at one moment."""

    def __init__(self, model: nn.Module):
        self.names: dict[int, str] = {}
        self.modules: dict[int, tuple[dict[str, Any], dict[str, tuple[int, ...]]]] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), name)
            self.modules.setdefault(id(m), (_attrs(m), _tensors(m)))
        self.config = _config_dict(model)


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(model)


def _top_moves(moves: dict[str, str]) -> dict[str, str]:
    """Moves not implied by a parent's move (``a -> b`` implies ``a.x -> b.x``), shallowest first."""
    out: dict[str, str] = {}
    for new in sorted(moves, key=lambda n: n.count(".")):
        old = moves[new]
        implied = any(new.startswith(p + ".") and old == q + new[len(p):] for p, q in out.items())
        if not implied:
            out[new] = old
    return out


def changes(before: Snapshot, model: nn.Module) -> dict[str, Any]:
    """What changed in ``model`` since ``before`` (module docstring)."""
    tensors: dict[str, dict[str, list]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    moves: dict[str, str] = {}
    replayable = True
    seen: set[int] = set()
    for name, m in model.named_modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        if id(m) not in before.modules:
            replayable = False  # a module the plan created: not data prunekit can rebuild
            continue
        old_name = before.names[id(m)]
        if old_name != name:
            moves[name] = old_name
        old_attrs, old_tensors = before.modules[id(m)]
        now_attrs, now_tensors = _attrs(m), _tensors(m)
        diff = {k: _jsonable(v) for k, v in now_attrs.items() if k not in old_attrs or old_attrs[k] != v}
        if diff:
            attrs[name] = diff
        shapes = {k: [list(old_tensors[k]), list(s)] for k, s in now_tensors.items()
                  if k in old_tensors and old_tensors[k] != s}
        if any(k not in old_tensors for k in now_tensors):
            replayable = False  # a tensor the plan added
        if shapes:
            tensors[name] = shapes
    out: dict[str, Any] = {"tensors": tensors, "attrs": attrs, "moved": _top_moves(moves)}
    now_config = _config_dict(model)
    if before.config is not None and now_config is not None:
        diff = {k: v for k, v in now_config.items() if before.config.get(k) != v}
        if diff:
            out["config"] = {k: _jsonable(v) for k, v in diff.items()}
    if not replayable:
        out["replayable"] = False
    return out


def replayable(records: Iterable[Mapping[str, Any] | None]) -> bool:
    """Whether every plan recorded its structural changes as data (files from before they did: no)."""
    return all(r is not None and r.get("replayable", True) for r in records)


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def check_resizable(model: nn.Module, record: Mapping[str, Any]) -> list[str]:
    """What keeps ``record`` from applying to ``model`` as it is now (empty: it applies): a module it names that the
    model lacks, or a tensor whose shape is not the one it had before the plan."""
    problems = []
    for new, old in record.get("moved", {}).items():
        if _module(model, old) is None:
            problems.append(f"module {old!r} (moved to {new!r}) is missing")
    if problems:
        return problems
    moved = dict(record.get("moved", {}))
    for name, shapes in record.get("tensors", {}).items():
        source = next((old + name[len(new):] for new, old in moved.items()
                       if name == new or name.startswith(new + ".")), name)
        m = _module(model, source)
        if m is None:
            problems.append(f"module {source!r} is missing")
            continue
        have = _tensors(m)
        for t, (before, _) in shapes.items():
            if t not in have:
                problems.append(f"{source}.{t} is missing")
            elif list(have[t]) != list(before):
                problems.append(f"{source}.{t}: expected shape {tuple(before)} before pruning, the model has "
                                f"{tuple(have[t])}")
    return problems


def resize(model: nn.Module, record: Mapping[str, Any],
           memo: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """Make the changes of ``record`` (one plan's :func:`changes`) on ``model``: moves, attributes, the config, and
    every recorded tensor replaced by an uninitialised one of its new shape (same dtype, device and requires_grad;
    ``memo`` keeps tensors shared between modules shared across calls). Check with :func:`check_resizable` first."""
    from .wrapper import set_submodule

    memo = {} if memo is None else memo
    moved = record.get("moved", {})
    sources = {new: _module(model, old) for new, old in moved.items()}
    for new in sorted(sources, key=lambda n: n.count(".")):
        set_submodule(model, new, sources[new])
    for name, values in record.get("attrs", {}).items():
        m = _module(model, name)
        if m is None:
            raise PrunekitError(f"resize: module {name!r} is missing")
        for k, v in values.items():
            old = getattr(m, k, None)
            setattr(m, k, tuple(v) if isinstance(old, tuple) and isinstance(v, list) else v)
    config = getattr(model, "config", None)
    for k, v in record.get("config", {}).items():
        old = getattr(config, k, None)
        setattr(config, k, tuple(v) if isinstance(old, tuple) and isinstance(v, list) else v)
    for name, shapes in record.get("tensors", {}).items():
        m = _module(model, name)
        if m is None:
            raise PrunekitError(f"resize: module {name!r} is missing")
        for t, (_, after) in shapes.items():
            old = m._parameters.get(t) if t in m._parameters else m._buffers.get(t)
            if id(old) not in memo:  # (old, new): the old one kept alive, so its id stays its own
                data = torch.empty(after, dtype=old.dtype, device=old.device)
                memo[id(old)] = (old, nn.Parameter(data, requires_grad=old.requires_grad)
                                 if isinstance(old, nn.Parameter) else data)
            new = memo[id(old)][1]
            if isinstance(new, nn.Parameter):
                setattr(m, t, new)  # through __setattr__: an RNN's _flat_weights follow
            else:
                m._buffers[t] = new
