"""Undo for structural changes: a deep copy of a model, restored *in place* if pruning breaks it.

Pruning replaces parameters and changes attributes (``out_channels``, ``num_heads``) and may replace sub-modules
(an emptied adapter's wrapper). :func:`restore` gives every module object that was in the model its snapshot state
and children back, so a user's references to the model and to its sub-modules stay valid. :func:`output_shapes` runs
the forward a pruned model must still pass (same output shapes as before).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn

from .graph import call_model

__all__ = ["snapshot", "restore", "output_shapes"]

Snapshot = tuple[nn.Module, dict[str, nn.Module]]


def snapshot(model: nn.Module) -> Snapshot:
    """A deep copy of ``model`` and its modules by path, for :func:`restore`."""
    return copy.deepcopy(model), dict(model.named_modules(remove_duplicate=False))


def restore(model: nn.Module, snap: Snapshot) -> None:
    """Put ``model`` back to its snapshot in place: every module object that was in the model gets (a copy of) the
    snapshot's state (parameters, buffers, attributes) and its children back; the snapshot can be restored again."""
    saved, before = snap
    saved_modules = dict(saved.named_modules(remove_duplicate=False))
    # The model gets copies of the snapshot's state, never the snapshot's own dicts and tensors: pruning the restored
    # model replaces entries of its ``_parameters`` in place, and the snapshot must survive for a later restore. One
    # memo for all modules keeps tied parameters tied; snapshot modules map to the user's module objects.
    memo = {id(saved_modules[path]): original for path, original in before.items()}
    for path, original in before.items():
        source = saved_modules[path]
        state = copy.deepcopy({k: v for k, v in source.__dict__.items() if k != "_modules"}, memo)
        state["_modules"] = {k: (None if v is None else before[f"{path}.{k}" if path else k])
                             for k, v in source._modules.items()}
        original.__dict__.clear()
        original.__dict__.update(state)


def output_shapes(model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> list[tuple[int, ...]]:
    """Shapes of every tensor the model returns on ``example_inputs`` (eval mode, no grad; the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = call_model(model, example_inputs, forward_fn)
    finally:
        model.train(was_training)
    return [tuple(t.shape) for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor)]
