"""Undo for structural changes: every module's state, restored *in place* if pruning breaks the model.

Pruning (torch-pruning's slicing and prunekit's own) never writes into a tensor: it *replaces* parameters and
buffers with smaller ones, changes attributes (``out_channels``, ``num_heads``) and may replace sub-modules (an
emptied adapter's wrapper). So a snapshot need not copy any weight: it keeps, for every module object, a shallow copy
of its ``__dict__`` (the ``_parameters`` / ``_buffers`` / ``_modules`` dicts and other containers copied one level,
the tensors themselves shared). :func:`restore` gives every module object that was in the model that state back, so a
user's references to the model, its sub-modules and its parameters stay valid. :func:`output_shapes` runs the forward
a pruned model must still pass (same output shapes as before). The probe that finds which groups break a model
snapshots only the modules one group touches (:func:`snapshot_modules`); a restore under a live torch-pruning graph
re-keys the graph's nodes of stray parameters first (:func:`rekey_graph`), since torch-pruning keys them by object.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from .graph import call_model, eval_mode
from .group import UnsupportedModelError
from .outputs import output_tensors

__all__ = ["snapshot", "snapshot_modules", "restore", "rekey_graph", "output_shapes"]

Snapshot = list[tuple[nn.Module, dict[str, Any]]]


def _shallow(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its dicts, lists and sets copied one level (module registries, hooks, shape lists)."""
    return {k: (v.copy() if isinstance(v, (dict, list, set)) else v) for k, v in state.items()}


def snapshot(model: nn.Module) -> Snapshot:
    """The state of every module of ``model`` (tensors shared, not copied), for :func:`restore`."""
    return snapshot_modules(model.modules())


def snapshot_modules(modules: Iterable[nn.Module]) -> Snapshot:
    """The state of ``modules`` (each once), for :func:`restore`."""
    seen: dict[int, nn.Module] = {}
    for m in modules:
        seen.setdefault(id(m), m)
    return [(m, _shallow(m.__dict__)) for m in seen.values()]


def rekey_graph(dg: Any, snap: Snapshot) -> None:
    """Before restoring ``snap`` under torch-pruning's graph ``dg``: the stray parameters torch-pruning replaced get
    their graph nodes back under the original parameter objects (``dg.module2node`` is keyed by object)."""
    for m, state in snap:
        saved = state.get("_parameters", {})
        for attr, p in list(m._parameters.items()):
            old = saved.get(attr)
            if p is not old and old is not None and p in dg.module2node:
                node = dg.module2node.pop(p)
                node.module = old
                dg.module2node[old] = node
                if p in dg._param_to_name:
                    dg._param_to_name[old] = dg._param_to_name.pop(p)


def restore(model: nn.Module | None, snap: Snapshot) -> None:
    """Put ``model`` back to its snapshot in place: every module object that was in it gets its attributes, its
    parameters and buffers (the same tensor objects) and its children back; the snapshot can be restored again.
    (``model`` names what is restored; the snapshot holds the module objects themselves.)"""
    for module, state in snap:
        module.__dict__.clear()
        module.__dict__.update(_shallow(state))


def output_shapes(model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> list[tuple[int, ...]]:
    """Shapes of every tensor the model returns on ``example_inputs`` (eval mode, no grad; the mode is restored)."""
    with eval_mode(model), torch.no_grad():
        out = call_model(model, example_inputs, forward_fn)
    return [tuple(t.shape) for t in output_tensors(out)]


def apply_or_restore(model: nn.Module, plan: Any, groups: list, example_inputs: Any,
                     reference: list[tuple[int, ...]]) -> None:
    """``plan.apply(model, groups)``, then a forward on ``example_inputs``: if either fails or the output shapes are
    not ``reference``, the model is restored from a snapshot taken before and
    :class:`~prunekit.core.group.UnsupportedModelError` names the problem and the groups pruned."""
    snap = snapshot(model)
    try:
        plan.apply(model, groups)
        shapes = output_shapes(model, example_inputs)
        problem = None if shapes == reference else f"output shapes {shapes} instead of {reference}"
    except Exception as e:  # noqa: BLE001 - any failure: restore, then report it by name
        problem = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    if problem is not None:
        restore(model, snap)
        pruned = sorted(k for k, v in plan.remove.items() if v)
        raise UnsupportedModelError(f"prune after cycle {plan.meta.get('cycle')}: the pruned model does not run "
                                    f"({problem}); the model was restored. Groups pruned: {pruned[:6]}; pass "
                                    "their layers in ignore= (backbone_groups) to keep them")
