"""Mixed-task layers: every sample of a batch through its own task's adapters and head, in one backbone pass.

For one adapter position the tasks' adapters are padded to the widest and stacked (``T`` tasks, widths ``n_t``)::

    D (T, n, m)   Db (T, n)   U (T, m, n)   Ub (T, m)      n = max n_t; rows / columns past n_t are zero
    task t's scale folded into U and Ub; a task with no adapter here (never injected, or pruned to zero): all zero

A batch whose sample ``b`` belongs to task ``idx[b]`` gathers each sample's matrices and runs one batched matmul pair
(``bmm`` over the batch), cut to the widest task *in the batch*::

    z = act(h @ D[idx].T + Db[idx])        # (B, L, n)   h: (B, L, m) channels last (tokens, or (B, H, W, m))
    r = z @ U[idx].T + Ub[idx]             # (B, L, m)   padded units: act(0) = 0 times a zero column

so the cost per position is that of one adapter of the widest present width, whatever the number of tasks; the gather
costs ``B * n * m`` numbers. A batch of one task takes that task's matrices directly (plain ``linear``). A module
called on more rows than the batch has samples (Swin's window attention sees ``B * windows`` rows, sample-major)
folds each sample's rows into its tokens (channels last) or repeats its task over them (channels first).

Heads: one ``Linear`` per task; the output is ``(B, C_max)`` with ``-inf`` past each sample's own classes (softmax
and top-k over a row give that task's answer). Which task each sample belongs to is set by the model on the
:class:`Router` it shares with its layers, for one forward at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.layers import _ACTIVATIONS
from ..core.wrapper import BaseLayerWrapper
from ..errors import PrunekitError
from .source import TaskAdapter

__all__ = ["Router", "AdapterBank", "TaskAdapterLayer", "TaskHeads"]


@dataclass
class Router:
    """The batch in flight: ``index[b]`` is sample b's task slot; ``present`` the slots in the batch, sorted."""

    index: torch.Tensor | None = None
    present: list[int] = field(default_factory=list)

    def rows(self, n: int) -> torch.Tensor:
        """The task slot of each of ``n`` rows (``n`` = batch, or a multiple of it: rows sample-major)."""
        if self.index is None:
            raise PrunekitError("a task layer ran outside a multi-task forward; call the model with tasks=")
        b = self.index.shape[0]
        if n == b:
            return self.index
        if n % b:
            raise PrunekitError(f"an adapter position saw {n} rows for a batch of {b} samples; mixed-task batches "
                                "need each sample's rows together (a multiple of the batch, sample-major)")
        return self.index.repeat_interleave(n // b)


class AdapterBank(nn.Module):
    """Every task's adapter at one position, stacked (module docstring). Rebuilt by :meth:`set` when tasks change."""

    def __init__(self, kind: str, act: str, layout: str, dim: int):
        super().__init__()
        self.kind, self.act_name, self.layout, self.dim = kind, act, layout, dim
        self.act = _ACTIVATIONS[act]()
        self.widths: list[int] = []
        for name in ("down", "down_bias", "up", "up_bias"):
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def set(self, adapters: list[TaskAdapter | None]) -> None:
        """One entry per task slot (None: that task has no adapter here)."""
        ref = next(a.down_weight for a in adapters if a is not None)
        T, n, m = len(adapters), max(a.width if a else 0 for a in adapters), self.dim
        down, down_bias = ref.new_zeros(T, n, m), ref.new_zeros(T, n)
        up, up_bias = ref.new_zeros(T, m, n), ref.new_zeros(T, m)
        for t, a in enumerate(adapters):
            if a is None:
                continue
            w = a.width
            down[t, :w] = a.down_weight
            up[t, :, :w] = a.up_weight * a.scale
            if a.down_bias is not None:
                down_bias[t, :w] = a.down_bias
            if a.up_bias is not None:
                up_bias[t] = a.up_bias * a.scale
        self.down, self.down_bias, self.up, self.up_bias = down, down_bias, up, up_bias
        self.widths = [a.width if a else 0 for a in adapters]

    def forward(self, h: torch.Tensor, router: Router) -> torch.Tensor | None:
        """The adapters' output for ``h`` (same shape), or None when no task in the batch has an adapter here."""
        n = max(self.widths[t] for t in router.present)
        if n == 0:
            return None
        if len(router.present) == 1:
            return self._one(h, router.present[0])
        if self.layout == "channels_first":  # (R, m, H, W), R = B or a multiple (each row its sample's task)
            rows = h.shape[0]
            idx = router.rows(rows)
            down, down_bias, up, up_bias = self._gather(idx, n)
            x = h.reshape(rows, self.dim, -1)  # (R, m, L)
            z = self.act(torch.baddbmm(down_bias.unsqueeze(2), down, x))  # (R, n, L)
            return torch.baddbmm(up_bias.unsqueeze(2), up, z).reshape(h.shape)
        idx = router.rows(router.index.shape[0])  # channels last: a sample's rows merge into its tokens
        if h.shape[0] % idx.shape[0]:
            router.rows(h.shape[0])  # raises, naming the shapes
        down, down_bias, up, up_bias = self._gather(idx, n)
        x = h.reshape(idx.shape[0], -1, self.dim)  # (B, L, m): tokens, (H, W) or windows x tokens flattened
        z = self.act(torch.baddbmm(down_bias.unsqueeze(1), x, down.transpose(1, 2)))  # (B, L, n)
        return torch.baddbmm(up_bias.unsqueeze(1), z, up.transpose(1, 2)).reshape(h.shape)

    def _gather(self, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """Each row's task matrices, cut to width ``n``: (R, n, m), (R, n), (R, m, n), (R, m)."""
        return self.down[idx, :n], self.down_bias[idx, :n], self.up[idx, :, :n], self.up_bias[idx]

    def _one(self, h: torch.Tensor, t: int) -> torch.Tensor:
        w = self.widths[t]
        down, down_bias, up, up_bias = self.down[t, :w], self.down_bias[t, :w], self.up[t, :, :w], self.up_bias[t]
        if self.layout == "channels_first":
            z = self.act(F.conv2d(h, down[:, :, None, None], down_bias))
            return F.conv2d(z, up[:, :, None, None], up_bias)
        return F.linear(self.act(F.linear(h, down, down_bias)), up, up_bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, act={self.act_name}, layout={self.layout}, dim={self.dim}, widths={self.widths}"


class TaskAdapterLayer(BaseLayerWrapper):
    """A backbone sub-layer with the tasks' adapters at its output (series) or beside it (parallel)."""

    def __init__(self, base_layer: nn.Module, bank: AdapterBank, router: Router):
        super().__init__(base_layer)
        self.bank = bank
        self._router = router  # shared with the model (a plain object, not a module)

    def forward(self, x, *args, **kwargs):
        out = self.base_layer(x, *args, **kwargs)
        r = self.bank(out if self.bank.kind == "series" else x, self._router)
        return out if r is None else out + r


class TaskHeads(nn.Module):
    """One classifier per task slot in place of the backbone's; ``(B, C_max)`` logits, ``-inf`` past a sample's
    own classes."""

    def __init__(self, router: Router):
        super().__init__()
        self._router = router
        self.heads = nn.ModuleList()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        router = self._router
        sizes = [self.heads[t].out_features for t in router.present]
        if len(router.present) == 1:
            return self.heads[router.present[0]](features)
        idx = router.index
        out = features.new_full((features.shape[0], max(sizes)), float("-inf"))
        for t, c in zip(router.present, sizes):
            rows = (idx == t).nonzero().squeeze(1)
            out[rows, :c] = self.heads[t](features[rows])
        return out
