"""PHM-Adapter (Zhang et al., 2021) and Compacter (Karimi Mahabadi et al., 2021): adapters whose down and up
projections are parameterised hypercomplex multiplication (PHM) layers, n = 12 as in the paper's appendix A.6.

A PHM layer builds its ``(out, in)`` weight as a sum of Kronecker products::

    W = sum_{i=1..n} A_i (x) B_i,    A_i: n x n,    B_i: (out/n) x (in/n)

- PHM-Adapter: every layer owns its A_i and B_i (n^3 + in*out/n weights);
- Compacter: the A_i ("slow weights") are shared by every adapter layer of the model, and each B_i is low rank,
  ``B_i = s_i t_i^T`` ("fast weights", rank 1 by default): rank * (in + out) weights per layer.

Adapters sit where series adapters sit (after attention and MLP). Widths follow sigma (or a fixed ``hidden``),
rounded up to a multiple of n so that the Kronecker blocks tile the weight. The up layer starts at zero (B, or s, is
zero), so the model starts at the backbone's output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..adapters.inject import DEFAULT_TARGETS, AdapterConfig, inject_adapters, match_modules, output_dim
from ..config import option
from ..errors import ConfigError
from ..models.params import mark_trainable
from .base import Method, register_method


class PHMLinear(nn.Module):
    """``y = x W^T + b`` with ``W = sum_i A_i (x) B_i``.

    Args:
        in_features, out_features: both divisible by ``n``.
        n: number of Kronecker summands (and size of each A_i).
        shared_A: an ``(n, n, n)`` parameter shared with other layers (Compacter); None gives the layer its own.
        rank: None for full B_i (PHM); an int for ``B_i = s_i t_i^T`` of that rank (Compacter).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, n: int = 12,
                 shared_A: nn.Parameter | None = None, rank: int | None = None):
        super().__init__()
        if in_features % n or out_features % n:
            raise ValueError(f"PHM layer: in_features={in_features} and out_features={out_features} must be "
                             f"divisible by n={n}")
        self.in_features, self.out_features, self.n, self.rank = in_features, out_features, n, rank
        p, q = out_features // n, in_features // n
        self.A = shared_A if shared_A is not None else nn.Parameter(torch.empty(n, n, n))
        if shared_A is None:
            nn.init.normal_(self.A, std=0.01)
            with torch.no_grad():
                self.A.add_(torch.eye(n).unsqueeze(0))  # near-identity mixing to start
        if rank is None:
            self.B = nn.Parameter(torch.empty(n, p, q))
            nn.init.kaiming_uniform_(self.B.view(n * p, q), a=math.sqrt(5))
        else:
            self.s = nn.Parameter(torch.empty(n, p, rank))
            self.t = nn.Parameter(torch.empty(n, rank, q))
            nn.init.normal_(self.s, std=0.02)
            nn.init.kaiming_uniform_(self.t.view(n * rank, q), a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def zero_init_(self) -> None:
        """Make the layer output zero (the up projection of a fresh adapter)."""
        with torch.no_grad():
            (self.B if self.rank is None else self.s).zero_()
            if self.bias is not None:
                self.bias.zero_()

    @property
    def weight(self) -> torch.Tensor:
        B = self.B if self.rank is None else self.s @ self.t  # (n, p, q)
        n, p, q = B.shape
        return torch.einsum("iab,icd->acbd", self.A, B).reshape(n * p, n * q)  # sum_i kron(A_i, B_i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, rank={self.rank}"


@dataclass
class PHMConfig:
    n: int = field(**option("number of Kronecker summands; dims must be divisible by it (the paper: 12)", default=12))
    sigma: Optional[float] = field(**option("compression m_i / n_i of every adapter; the width is rounded up to a "
                                            "multiple of n", default=32.0))
    hidden: Optional[int] = field(**option("a fixed width instead of sigma (rounded up to a multiple of n)",
                                           default=None))
    targets: list[str] = field(**option("glob patterns of the sub-layers to wrap", default_factory=lambda: list(
        DEFAULT_TARGETS)))

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"method.n: expected an integer >= 1, got {self.n}")
        if self.hidden is not None:
            self.sigma = None


@dataclass
class CompacterConfig(PHMConfig):
    rank: int = field(**option("rank of the fast weights B_i = s_i t_i^T", default=1))

    def __post_init__(self):
        super().__post_init__()
        if self.rank < 1:
            raise ConfigError(f"method.rank: expected an integer >= 1, got {self.rank}")


def phm_width(dim: int, n: int, sigma: float | None, hidden: int | None) -> int:
    """Adapter width for PHM layers: round(m / sigma) (or hidden), rounded up to a multiple of n."""
    base = hidden if hidden is not None else max(1, math.floor(dim / sigma + 0.5))
    return n * math.ceil(base / n)


def _inject(model: nn.Module, config: PHMConfig, rank: int | None) -> None:
    names = match_modules(model, config.targets)
    bad = [(name, d) for name in names if (d := output_dim(model.get_submodule(name))) % config.n]
    if bad:
        raise ConfigError(f"method.n: {config.n} must divide every adapted width; {bad[0][0]} is {bad[0][1]} wide")
    mark_trainable(model, adapters=False, head=True)
    ref = next(model.parameters())
    shared = None
    if rank is not None:
        shared = nn.Parameter(torch.empty(config.n, config.n, config.n, device=ref.device, dtype=ref.dtype))
        nn.init.normal_(shared, std=0.01)
        with torch.no_grad():
            shared.add_(torch.eye(config.n, device=ref.device, dtype=ref.dtype).unsqueeze(0))
    for name in names:
        dim = output_dim(model.get_submodule(name))
        width = phm_width(dim, config.n, config.sigma, config.hidden)

        def layer(i, o, bias=True):
            return PHMLinear(i, o, bias, n=config.n, shared_A=shared, rank=rank)

        inject_adapters(model, AdapterConfig(hidden=width, targets=[name]), linear_layer=layer)
    mark_trainable(model)  # adapters (with the shared A) + head


def apply_phm(model: nn.Module, config: PHMConfig) -> None:
    _inject(model, config, rank=None)


def apply_compacter(model: nn.Module, config: CompacterConfig) -> None:
    _inject(model, config, rank=config.rank)


PHM = register_method(Method("phm_adapter", PHMConfig, apply_phm,
                             description="adapters with PHM (Kronecker-sum) layers, n = 12, + head"))
COMPACTER = register_method(Method("compacter", CompacterConfig, apply_compacter,
                                   description="PHM adapters with shared A_i and rank-1 B_i (n = 12) + head"))
