"""What "reloads natively" means: the library builds a model whose every tensor has the pruned model's shape."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..registry import PrunekitError

__all__ = ["NotNativeError", "compare_shapes", "layer_differences"]


class NotNativeError(PrunekitError, ValueError):
    """The pruned model's widths cannot be written in its library's config or constructor arguments."""


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


_INDEX = re.compile(r"(?:(?<=\.)|^)\d+(?=\.|$)")


def layer_differences(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """``'a.0.w (3, 4) vs a.1.w (2, 4)'`` for the first tensor whose repeated layers have different shapes."""
    seen: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        pattern = _INDEX.sub("*", key)
        if pattern == key:
            continue
        if pattern in seen and seen[pattern][1] != shape:
            first, s = seen[pattern]
            return f"{first} {s} vs {key} {shape}"
        seen.setdefault(pattern, (key, shape))
    return None


def compare_shapes(pruned: Mapping[str, torch.Tensor], built: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NotNativeError` when ``built`` (what ``what`` constructs) differs from ``pruned`` in a key or
    a shape: first the layers that differ from one another (not uniform), else the first tensor that differs."""
    a, b = _shapes(pruned), _shapes(built)
    wrong = [k for k in a if k in b and a[k] != b[k]]
    missing = [k for k in a if k not in b] + [k for k in b if k not in a]
    if not wrong and not missing:
        return
    uneven = layer_differences(a)
    if uneven is not None:
        raise NotNativeError(f"the repeated layers have different widths ({uneven}), and {what} builds every layer "
                             f"alike: prune with uniform=True, or reload with prunekit.load_pruned / an export")
    if wrong:
        k = wrong[0]
        raise NotNativeError(f"{what} builds {k} as {b[k]}, the pruned model has {a[k]}")
    raise NotNativeError(f"{what} builds other tensors than the pruned model has (e.g. {missing[:3]})")
