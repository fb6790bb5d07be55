"""What a model costs to run: parameters, MACs and measured batch-1 latency, as a run records them every cycle.

::

    cost = model_cost(model, torch.zeros(1, 3, 224, 224, device="cuda"))
    cost.params, cost.macs, cost.latency_ms          # 25_557_032, 4_111_514_624, 4.9

MACs are torch-pruning's count on the example batch (:func:`~prunekit.budget.search.count_macs`, the measure a ``macs``
budget uses). Latency is the median wall time of ``repeats`` forwards after ``warmup`` untimed ones, in eval mode
without gradients, on the device the example lives on (CUDA is synchronised around every forward); it is a
measurement on a possibly busy machine, so compare cycles of one run, not runs on different machines.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .search import count_macs, count_parameters
from ..errors import PrunekitError
from ..core.graph import call_model

__all__ = ["Cost", "model_cost", "latency_ms", "synchronize", "WARMUP", "REPEATS"]

WARMUP, REPEATS = 5, 30  # cheap: 35 batch-1 forwards per cycle (0.3 s for the offline ViT on one CPU core)


@dataclass(frozen=True)
class Cost:
    """Parameters, MACs of one forward of the example batch, and its median latency in milliseconds."""

    params: int
    macs: int
    latency_ms: float


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU. Timings call it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(example_inputs: Any) -> torch.device:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.device
    values = example_inputs.values() if isinstance(example_inputs, dict) else example_inputs
    return next((_device_of(v) for v in values), torch.device("cpu"))


@torch.no_grad()
def latency_ms(model: nn.Module, example_inputs: Any, *, warmup: int = WARMUP, repeats: int = REPEATS,
               autocast_dtype: torch.dtype | None = None, forward_fn: Callable | None = None) -> float:
    """Median milliseconds of one forward on ``example_inputs`` (eval mode, no gradients; the mode is restored).

    Args:
        model: the model, on the device of ``example_inputs``.
        example_inputs: the batch to time (batch 1 for latency).
        warmup: untimed forwards first (allocator, kernel selection, caches).
        repeats: timed forwards; the median is returned.
        autocast_dtype: run under ``torch.autocast`` with this dtype (bf16 when the run trains in bf16).
        forward_fn: ``fn(model, example_inputs)`` for models that need more than ``model(x)``.
    """
    if repeats < 1 or warmup < 0:
        raise PrunekitError(f"latency_ms: expected repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = _device_of(example_inputs)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    was_training = model.training
    model.eval()
    times = []
    try:
        with autocast:
            for i in range(warmup + repeats):
                synchronize(device)
                t0 = time.perf_counter()
                call_model(model, example_inputs, forward_fn)
                synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1e3 * statistics.median(times)


def model_cost(model: nn.Module, example_inputs: Any, *, autocast_dtype: torch.dtype | None = None) -> Cost:
    """Parameters, MACs and batch-1 latency of ``model`` on ``example_inputs`` (see the module docstring)."""
    return Cost(params=count_parameters(model), macs=count_macs(model, example_inputs),
                latency_ms=latency_ms(model, example_inputs, autocast_dtype=autocast_dtype))
