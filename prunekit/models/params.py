"""Parameter accounting and freezing: what is trained, how much, and the closed forms to check it against."""
from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

from torch import nn

from ..adapters.layers import Adapter, hidden_size
from ..budget.search import count_parameters

__all__ = [
    "count_parameters",
    "head_names",
    "mark_trainable",
    "adapter_param_count",
    "head_param_count",
]


def head_names(model: nn.Module) -> list[str]:
    """Qualified names of the classifier head's modules (timm's ``get_classifier()``; else ``head`` / ``fc``)."""
    names = {m: n for n, m in model.named_modules()}
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and head in names and names[head]:
            return [names[head]]
    return [n for n in ("head", "fc", "classifier") if n in dict(model.named_children())]


def mark_trainable(model: nn.Module, patterns: Sequence[str] = (), adapters: bool = True, head: bool = True) -> int:
    """Freeze everything, then unfreeze adapters, the head and parameters whose names match ``patterns`` (globs).

    Returns the number of trainable parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if adapters:
        for m in model.modules():
            if isinstance(m, Adapter):
                m.requires_grad_(True)
    if head:
        for name in head_names(model):
            model.get_submodule(name).requires_grad_(True)
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(True)
    return count_parameters(model, trainable_only=True)


def adapter_param_count(dims: Iterable[int], sigma: float | None = None, hidden: int | None = None,
                        bias: bool = True) -> int:
    """Closed form: ``sum_i 2 n_i m_i (+ n_i + m_i with biases)`` for adapters on sub-layers of widths ``dims``."""
    total = 0
    for m in dims:
        n = hidden_size(m, sigma, hidden)
        total += 2 * n * m + ((n + m) if bias else 0)
    return total


def head_param_count(features: int, classes: int, bias: bool = True) -> int:
    """Closed form of a linear head: ``(d + 1) * classes``."""
    return (features + int(bias)) * classes
