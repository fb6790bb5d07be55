"""What a model returned, as the tensors prunekit traces, protects and compares.

Models return a tensor, tuples and lists of them, dicts (torchvision's segmentation models: ``{'out', 'aux'}``; its
detection models in eval mode: a list of ``{'boxes', 'scores', 'labels'}`` dicts) or dataclass-like records
(transformers' ``ModelOutput``: ``logits``, ``last_hidden_state``, ``pooler_output`` ...). :func:`output_tensors`
takes every tensor among them in order; anything else (a transformers KV ``Cache``, ``None`` fields) is the model's
state, not its output, and is skipped.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["output_tensors"]


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in ``out``, depth first, in the order the model returned them (dict and field order)."""
    found: list[torch.Tensor] = []

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, dict):  # ModelOutput is an OrderedDict of its non-None fields
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                visit(getattr(x, f.name))

    visit(out)
    return found
