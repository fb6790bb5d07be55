"""Heads and head dimensions as prunable groups (kinds ``head`` and ``head_dim``), and the functions that find them
in a model."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from ...core.ignore import resolve_ignore
from ...core.policy import Policy
from ...registry import PrunekitError
from .generic import scan
from .layouts import HeadLayout, HeadSlice, UnsupportedAttentionError
from .slicing import head_dim_of, owner_of, present, slice_head_dims, slice_heads, units_of


class _AttentionGroup:
    """Shared machinery of :class:`HeadGroup` and :class:`HeadDimGroup` (one attention module, live shapes)."""

    kind: str = ""
    _suffix: str = ""

    def __init__(self, module_name: str, module: nn.Module, layout: HeadLayout, policy: Policy):
        self.module_name = module_name
        self.module = module
        self.layout = layout
        self.policy = policy

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self._suffix}" if self.module_name else self._suffix

    @property
    def num_heads(self) -> int:
        return units_of(self.module, self.layout)

    @property
    def head_dim(self) -> int:
        return head_dim_of(self.module, self.layout)

    @property
    def width(self) -> int:
        raise NotImplementedError

    @property
    def root(self) -> nn.Linear:
        """The first producer Linear (``qkv``, or ``q``), for code that asks a group for its device."""
        s = next(s for s in self.layout.slices if s.role == "row")
        return owner_of(self.module, s.path)[0]

    @property
    def modules(self) -> list[nn.Module]:
        """The attention module and every sub-layer whose tensors are sliced (qkv, proj, ...)."""
        out = [self.module]
        for s, _ in present(self.module, self.layout):
            o = owner_of(self.module, s.path)[0]
            if all(o is not x for x in out):
                out.append(o)
        return out

    def _units(self, t: torch.Tensor, s: HeadSlice) -> torch.Tensor:
        raise NotImplementedError

    def _views(self, role: str) -> list[torch.Tensor]:
        return [self._units(t, s) for s, t in present(self.module, self.layout) if s.role == role]

    def rows(self) -> list[torch.Tensor]:
        """``(width, k)`` views of the producers' weights: row j holds every weight that computes unit j."""
        return self._views("row")

    def columns(self) -> list[torch.Tensor]:
        """``(width, k)`` views of the consumers' weights: row j holds every weight that reads unit j."""
        return self._views("column")

    @property
    def fan(self) -> int:
        """Weights per unit in the producers (``3 * head_dim * C`` per head of a fused qkv)."""
        return sum(r.shape[1] for r in self.rows())

    def unit_params(self) -> int:
        """Parameters removed with each unit (weights, biases and per-head tables), for parameter budgets."""
        params = {id(p) for p in self.module.parameters()}
        return sum(self._units(t, s).shape[1] for s, t in present(self.module, self.layout)
                   if id(t) in params and (s.within_head or self.kind == "head"))

    def _check(self, idxs: Sequence[int]) -> list[int]:
        idxs = sorted({int(i) for i in idxs})
        if idxs and (idxs[0] < 0 or idxs[-1] >= self.width):
            raise IndexError(f"group {self.name}: indices must lie in [0, {self.width}), got {idxs}")
        if idxs and self.width - len(idxs) < self.policy.min_width:
            raise PrunekitError(f"group {self.name}: removing {len(idxs)} of {self.width} would leave fewer than "
                                f"policy.min_width={self.policy.min_width}; allowed: at most "
                                f"{self.width - self.policy.min_width}")
        return idxs

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.path}:{s.role}" for s, _ in present(self.module, self.layout))
        return (f"{type(self).__name__}({self.name!r}, n={self.width}, heads={self.num_heads}, "
                f"head_dim={self.head_dim}, m={self.fan}, [{parts}])")


class HeadGroup(_AttentionGroup):
    """The heads of one attention module as a prunable group of ``width = num_heads`` units.

    ``rows()`` gives, per head, its q, k and v rows (flattened, every producer of the layout); ``columns()`` the proj
    input columns reading it; ``prune(idxs)`` slices them, the per-head tables, and updates ``num_heads``. Parameters
    are replaced by smaller ones (rebuild the optimizer); ``requires_grad`` flags are kept. See the module docstring
    for the worked ViT-Ti example.

    Attributes:
        name: ``'<attention module>.heads'``, e.g. ``'blocks.3.attn.heads'``.
        kind: ``'head'``.
        policy: :class:`~prunekit.core.policy.Policy` (``min_width`` heads are always kept).
        module: the attention module; layout: its :class:`HeadLayout`.
    """

    kind = "head"
    _suffix = "heads"

    @property
    def width(self) -> int:
        """Current number of heads (key/value heads with their query heads, for grouped-query attention)."""
        return units_of(self.module, self.layout)

    def _units(self, t: torch.Tensor, s: HeadSlice) -> torch.Tensor:
        # (.., [repeats x H x block] along dim, ..) -> (H, repeats * block * rest)
        heads = units_of(self.module, self.layout)
        return t.movedim(s.dim, 0).reshape(s.repeats, heads, -1).transpose(0, 1).reshape(heads, -1)

    def prune(self, idxs: Sequence[int]) -> None:
        """Physically remove heads ``idxs`` (in ``0..width-1``); at least ``policy.min_width`` heads remain."""
        idxs = self._check(idxs)
        if idxs:
            slice_heads(self.module, self.layout, idxs)


class HeadDimGroup(_AttentionGroup):
    """Dimension d of every head of one attention module, as a group of ``width = head_dim`` units.

    Unit d is q, k and v row d of each head and the proj columns reading v's dimension d; removing it keeps every
    head and the output width, updates ``head_dim`` / ``attn_dim`` and folds the temperature change into q (module
    docstring). Per-head tables (Swin's bias table) are not touched. Example: ViT-Ti (H=3, hd=64) pruned by 16 dims
    has qkv = Linear(192, 3*3*48) and proj = Linear(144, 192).

    Attributes:
        name: ``'<attention module>.head_dim'``; kind: ``'head_dim'``; policy: :class:`~prunekit.core.policy.Policy`.
    """

    kind = "head_dim"
    _suffix = "head_dim"

    @property
    def width(self) -> int:
        """Current head_dim."""
        return self.head_dim

    def _units(self, t: torch.Tensor, s: HeadSlice) -> torch.Tensor:
        # (.., [repeats x H x hd] along dim, ..) -> (hd, repeats * H * rest)
        heads, hd = units_of(self.module, self.layout), self.head_dim
        return t.movedim(s.dim, 0).reshape(s.repeats, heads, hd, -1).permute(2, 0, 1, 3).reshape(hd, -1)

    def _views(self, role: str) -> list[torch.Tensor]:
        return [self._units(t, s) for s, t in present(self.module, self.layout) if s.role == role and s.within_head]

    def prune(self, idxs: Sequence[int]) -> None:
        """Physically remove dimensions ``idxs`` (in ``0..head_dim-1``) from every head."""
        idxs = self._check(idxs)
        if idxs:
            slice_head_dims(self.module, self.layout, idxs)


def _groups(model: nn.Module, ignore, min_width: int, field_name: str) -> list[tuple[str, nn.Module, HeadLayout]]:
    if not isinstance(min_width, int) or min_width < 1:
        raise PrunekitError(f"{field_name}: expected an integer >= 1 (an attention keeps at least one unit), "
                            f"got {min_width!r}")
    ignored, _ = resolve_ignore(model, ignore or ())
    skip = lambda name, m: m in ignored  # noqa: E731
    ok, refused = scan(model)
    refused = {n: r for n, r in refused.items() if not skip(n, model.get_submodule(n))}
    if refused:
        lines = "; ".join(f"{n}: {r}" for n, r in list(refused.items())[:4])
        more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
        raise UnsupportedAttentionError(
            f"{len(refused)} attention module(s) of {type(model).__name__} cannot have heads pruned: {lines}{more}; "
            f"pass their names in ignore= to prune the others")
    return [(n, m, lay) for n, (m, lay) in ok.items() if not skip(n, m)]


def head_groups(model: nn.Module, *, ignore: Iterable[str | nn.Module] | None = None,
                min_heads: int = 1) -> list[HeadGroup]:
    """One :class:`HeadGroup` per attention module of ``model``, in model order; nothing is modified.

    Args:
        model: any model; every module with an integer ``num_heads`` must be handled or ignored.
        ignore: attention modules to leave alone: names, ``fnmatch`` patterns (``'layers.0.*'``) or modules.
        min_heads: heads every module keeps (``policy.min_width``).

    Raises:
        UnsupportedAttentionError: a module with ``num_heads`` whose layout is unknown or fails verification (all of
            them are named), raised before any group is returned.
    """
    return [HeadGroup(n, m, lay, Policy(min_width=min_heads))
            for n, m, lay in _groups(model, ignore, min_heads, "min_heads")]


def head_dim_groups(model: nn.Module, *, ignore: Iterable[str | nn.Module] | None = None,
                    min_dim: int = 1) -> list[HeadDimGroup]:
    """One :class:`HeadDimGroup` per attention module that supports head-dim pruning (a registered layout with a
    ``query``: timm Attention without q/k norms, Swin, PVT-v2); refusals as in :func:`head_groups`."""
    return [HeadDimGroup(n, m, lay, Policy(min_width=min_dim))
            for n, m, lay in _groups(model, ignore, min_dim, "min_dim") if lay.query is not None]
