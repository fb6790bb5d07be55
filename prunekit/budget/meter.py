"""How latency is measured: :class:`LatencyMeter` (the device the model is on, a batch size, a thread count, a clock).

One model's forward time on a shared machine drifts by 10 % and more between minutes; two models timed side by side
(one call of each per round, :meth:`LatencyMeter.ratio`) drift together, so a latency budget compares models that
way (:mod:`prunekit.budget.latency`).
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..core.graph import eval_mode
from ..registry import PrunekitError
from .cost import synchronize

__all__ = ["LatencyMeter", "Timer", "wall_clock", "timed_rounds"]

Timer = Callable[[nn.Module, tuple, dict], float]  # seconds of one call module(*args, **kwargs)


def timed_rounds(modules: list[nn.Module], args: tuple, kwargs: dict, warmup: int, repeats: int
                 ) -> list[list[float]]:
    """Seconds of each module's ``repeats`` timed calls after ``warmup`` untimed rounds, every round calling each
    module once (CUDA synchronised around every call)."""
    device = _device(args, kwargs)
    for _ in range(warmup):
        for m in modules:
            m(*args, **kwargs)
    times: list[list[float]] = [[] for _ in modules]
    for _ in range(repeats):
        for i, m in enumerate(modules):
            synchronize(device)
            t0 = time.perf_counter()
            m(*args, **kwargs)
            synchronize(device)
            times[i].append(time.perf_counter() - t0)
    return times


def wall_clock(module: nn.Module, args: tuple, kwargs: dict, warmup: int = 5, repeats: int = 21) -> float:
    """Median seconds of ``module(*args, **kwargs)`` after ``warmup`` untimed calls (CUDA synchronised)."""
    return statistics.median(timed_rounds([module], args, kwargs, warmup, repeats)[0])


@dataclass(frozen=True)
class LatencyMeter:
    """How latency is measured: on the device the model and its example inputs are on, in eval mode, no grad.

    Attributes:
        batch_size: images (rows) per forward; None: the example inputs' batch. Inputs are repeated along dim 0.
        threads: ``torch.set_num_threads`` while measuring (restored after); None: as it is.
        warmup, repeats: untimed calls, then timed ones whose median counts.
        timer: ``fn(module, args, kwargs) -> seconds`` of one call, instead of the wall clock (a deterministic
            clock for tests or a simulated device); a meter with a timer caches nothing.
        cache: cache the lookup tables (see :func:`cache_dir`).
    """

    batch_size: int | None = None
    threads: int | None = None
    warmup: int = 5
    repeats: int = 21
    timer: Timer | None = None
    cache: bool = True

    def __post_init__(self):
        for key, low in (("batch_size", 1), ("threads", 1), ("repeats", 1), ("warmup", 0)):
            v = getattr(self, key)
            if v is None and key in ("batch_size", "threads"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise PrunekitError(f"latency.{key}: expected an integer >= {low}"
                                    + (" or None" if key in ("batch_size", "threads") else "") + f", got {v!r}")

    def describe(self) -> dict[str, Any]:
        """The settings a plan records (and the cache keys on)."""
        return {"batch_size": self.batch_size, "threads": self.threads or torch.get_num_threads(),
                "warmup": self.warmup, "repeats": self.repeats,
                "timer": None if self.timer is None else getattr(self.timer, "__qualname__", repr(self.timer))}

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        before = torch.get_num_threads()
        if self.threads is not None and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def call_seconds(self, module: nn.Module, args: tuple, kwargs: dict) -> float:
        """One call's seconds: the timer's, or the wall clock's median."""
        if self.timer is not None:
            return float(self.timer(module, args, kwargs))
        return wall_clock(module, args, kwargs, self.warmup, self.repeats)

    def batch(self, example_inputs: Any) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of one forward at ``batch_size`` (the example repeated along dim 0)."""
        args, kwargs = _call_args(example_inputs)
        if self.batch_size is None:
            return args, kwargs
        b0 = _batch_of(args, kwargs)
        return _repeat(args, b0, self.batch_size), _repeat(kwargs, b0, self.batch_size)

    @torch.no_grad()
    def measure(self, model: nn.Module, example_inputs: Any) -> float:
        """Seconds of one forward of ``model`` at the meter's batch size and threads."""
        args, kwargs = self.batch(example_inputs)
        with self.threads_set(), eval_mode(model):
            return self.call_seconds(model, args, kwargs)

    @torch.no_grad()
    def rounds(self, models: list[nn.Module], example_inputs: Any) -> list[list[float]]:
        """Seconds of every forward of each model, side by side: every round calls each model once, so a shared
        machine's drift (other processes, the clock speed) hits them alike. A meter with a timer: one value each."""
        args, kwargs = self.batch(example_inputs)
        with self.threads_set(), contextlib.ExitStack() as stack:
            for m in models:
                stack.enter_context(eval_mode(m))
            if self.timer is not None:
                return [[float(self.timer(m, args, kwargs))] for m in models]
            return timed_rounds(models, args, kwargs, self.warmup, self.repeats)

    def compare(self, models: list[nn.Module], example_inputs: Any) -> list[float]:
        """The median seconds of each model, measured side by side (:meth:`rounds`)."""
        return [statistics.median(t) for t in self.rounds(models, example_inputs)]

    def ratio(self, model: nn.Module, reference: nn.Module, example_inputs: Any) -> float:
        """``model``'s time over ``reference``'s: the median over rounds of the ratio within a round (two forwards
        a few milliseconds apart share the machine's state; two medians taken a minute apart do not)."""
        ours, theirs = self.rounds([model, reference], example_inputs)
        return statistics.median(a / b for a, b in zip(ours, theirs))

    def reference(self, model: nn.Module) -> nn.Module:
        """A frozen copy of ``model`` as it is now: what later measurements are compared with (:meth:`compare`),
        so a budget's fractions do not drift with the machine."""
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
        return ref


def _call_args(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


def _device(args: tuple, kwargs: dict) -> torch.device:
    return next((t.device for t in _tensors((args, kwargs))), torch.device("cpu"))


def _batch_of(args: tuple, kwargs: dict) -> int:
    t = next((t for t in _tensors((args, kwargs)) if t.ndim), None)
    if t is None:
        raise PrunekitError("latency.batch_size: the example inputs hold no tensor with a batch dim to repeat")
    return t.shape[0]


def _repeat(obj: Any, b0: int, batch: int) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.ndim and obj.shape[0] == b0 and batch != b0:
            reps = -(-batch // b0)
            return obj.repeat(reps, *([1] * (obj.ndim - 1)))[:batch].contiguous()
        return obj
    if isinstance(obj, dict):
        return {k: _repeat(v, b0, batch) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_repeat(v, b0, batch) for v in obj)
    return obj
