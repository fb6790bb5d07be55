"""When to prune and how much: the cycle count and the total width after every prune.

Compression of a set of adapters is ``sigma = sum_i m_i / sum_i n_i`` (the neuron-weighted mean of m_i / n_i; with
every n_i = m_i / sigma0 it is sigma0). Removing a fraction rho of the neurons multiplies sigma by 1 / (1 - rho), so
reaching sigma_target from sigma0 takes

    P = ceil( log(sigma_target / sigma0) / log(1 / (1 - rho)) )      prunes, i.e. P + 1 training cycles.

The paper (Sec. 3.2) writes C = ceil((log sigma0 - log sigma_target) / log rho - 1), which equals P - 1 at rho = 0.5
(see :func:`paper_cycle_count`); it does not hold for other rho because it divides by log rho, the fraction kept
only when rho = 0.5.

Each iterative prune removes ``round(rho * N)`` neurons; the last one removes what is left to reach
``N_target = floor(M / sigma_target)``, so the target is always met (sigma >= sigma_target) despite rounding.
One-shot (the ablation's non-iterative rows): adapters start at sigma0 = sigma_target * (1 - rho), are pruned once,
to N_target, after the first cycle, and train for as many cycles as the iterative run from ``sigma_reference``.
The paper (Sec. 4.2) and the issue write sigma0 = sigma_target / (1 - rho); read literally that starts *above* the
target (2 x sigma_target at rho = 0.5), from where pruning can only move away. One prune of rho multiplies sigma by
1 / (1 - rho), so the start that lands on the target is sigma_target * (1 - rho) (sigma_target / 2 at rho = 0.5).

Budgets given as a fraction to remove (params, MACs, channels; see budget.py) follow the same rule in their own
measure: each prune removes a fraction rho of what is left, so after k prunes ``1 - (1 - rho)^k`` of the model's
measure is gone, and the last prune stops exactly at the target ratio::

    P = ceil( log(1 - ratio) / log(1 - rho) )      prunes      (ratio 0.75, rho 0.5: 0.5, then 0.75)

Every schedule is bounded by :data:`MAX_PRUNES`: a tiny rho (1e-4 would plan some 20,000 cycles) is refused up
front with the count it implies, instead of running for days or allocating a list per neuron.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..core.policy import round_half_up
from ..registry import PrunekitError

__all__ = ["Schedule", "num_prunes", "paper_cycle_count", "oneshot_sigma0", "compression", "ratio_prunes",
           "ratio_steps", "MAX_PRUNES"]

MAX_PRUNES = 100  # more prunes than this is a typo in rho, not a schedule


def _check(rho: float, sigma0: float, sigma_target: float) -> None:
    if not 0.0 < rho < 1.0:
        raise PrunekitError(f"rho: expected a fraction in (0, 1), got {rho}")
    if not sigma0 > 0:
        raise PrunekitError(f"sigma0: expected a compression rate > 0, got {sigma0}")
    if not sigma_target > sigma0:
        raise PrunekitError(f"sigma_target: expected more than the starting compression sigma0={sigma0:g}, "
                            f"got {sigma_target:g}; pruning only raises sigma")


def _bounded(prunes: float, rho: float, what: str) -> int:
    if prunes > MAX_PRUNES:
        shown = f"{prunes:,.0f} prunes ({prunes + 1:,.0f} training cycles)" if math.isfinite(prunes) else \
            "infinitely many prunes"
        raise PrunekitError(f"rho: {rho:g} needs {shown} to reach {what}; at most {MAX_PRUNES} prunes are allowed "
                            f"(rho = 0.5 halves what is left each prune)")
    return int(prunes)


def num_prunes(sigma0: float, sigma_target: float, rho: float) -> int:
    """Prune steps needed to go from sigma0 to sigma_target removing a fraction rho each time (at most MAX_PRUNES)."""
    _check(rho, sigma0, sigma_target)
    step = -math.log1p(-rho)  # log(1 / (1 - rho)), accurate for tiny rho
    prunes = math.ceil(math.log(sigma_target / sigma0) / step - 1e-9) if step > 0 else math.inf
    return _bounded(max(1, prunes), rho, f"sigma_target={sigma_target:g} from sigma0={sigma0:g}")


def ratio_prunes(ratio: float, rho: float) -> int:
    """Prunes needed to remove a fraction ``ratio`` of a measure, each prune removing rho of what is left."""
    if not 0.0 < rho < 1.0:
        raise PrunekitError(f"rho: expected a fraction in (0, 1), got {rho}")
    if not 0.0 < ratio < 1.0:
        raise PrunekitError(f"ratio: expected a fraction in (0, 1) of the model to remove, got {ratio}")
    step = -math.log1p(-rho)
    prunes = math.ceil(-math.log1p(-ratio) / step - 1e-9) if step > 0 else math.inf
    return _bounded(max(1, prunes), rho, f"ratio={ratio:g}")


def ratio_steps(ratio: float, rho: float) -> list[float]:
    """Fraction removed after each prune: ``1 - (1 - rho)^k``, the last one exactly ``ratio``."""
    prunes = ratio_prunes(ratio, rho)
    return [min(ratio, 1.0 - (1.0 - rho) ** k) for k in range(1, prunes)] + [ratio]


def paper_cycle_count(sigma0: float, sigma_target: float, rho: float) -> int:
    """The paper's C = ceil((log sigma0 - log sigma_target) / log rho - 1), verbatim (Sec. 3.2)."""
    return math.ceil((math.log(sigma0) - math.log(sigma_target)) / math.log(rho) - 1 - 1e-9)


def oneshot_sigma0(sigma_target: float, rho: float) -> float:
    """Starting compression of a one-shot run: one prune of rho lands on sigma_target."""
    if not 0.0 < rho < 1.0:
        raise PrunekitError(f"rho: expected a fraction in (0, 1), got {rho}")
    return sigma_target * (1.0 - rho)


def compression(total_fan: int, total_width: int) -> float:
    """sigma = sum m_i / sum n_i (infinite once every neuron is gone)."""
    return math.inf if total_width == 0 else total_fan / total_width


@dataclass(frozen=True)
class Schedule:
    """Iterative or one-shot pruning towards ``sigma_target``, removing a fraction ``rho`` per prune."""

    rho: float = 0.5
    sigma_target: float = 512.0
    mode: Literal["iterative", "oneshot"] = "iterative"
    # one-shot runs get the training budget of an iterative run from here (None: from where the adapters start)
    sigma_reference: float | None = 32.0

    def __post_init__(self):
        if self.mode not in ("iterative", "oneshot"):
            raise PrunekitError(f"mode: expected 'iterative' or 'oneshot', got {self.mode!r}")
        if not 0.0 < self.rho < 1.0:
            raise PrunekitError(f"rho: expected a fraction in (0, 1), got {self.rho}")

    def target_width(self, total_fan: int) -> int:
        n = math.floor(total_fan / self.sigma_target + 1e-9)
        if n < 1:
            raise PrunekitError(f"sigma_target: {self.sigma_target:g} cannot be reached; the adapters' fans add up "
                                f"to m = {total_fan}, so sigma_target must be at most {total_fan} (one neuron left)")
        return n

    def widths(self, total_width: int, total_fan: int) -> list[int]:
        """Total width before training and after each prune: ``[N0, N1, ..., N_target]`` (one prune per step)."""
        sigma0 = compression(total_fan, total_width)
        n_target = self.target_width(total_fan)
        if self.mode == "oneshot":
            _check(self.rho, sigma0, self.sigma_target)
            return [total_width, n_target]
        prunes = num_prunes(sigma0, self.sigma_target, self.rho)
        widths = [total_width]
        for _ in range(prunes - 1):
            widths.append(max(n_target, widths[-1] - round_half_up(self.rho * widths[-1])))
        widths.append(n_target)
        return widths

    def cycles(self, total_width: int, total_fan: int) -> int:
        """Training cycles, the first included: prunes + 1 (iterative) or the reference run's count (one-shot)."""
        if self.mode == "oneshot":
            reference = self.reference(total_width, total_fan)
            if not reference > 0:
                raise PrunekitError(f"sigma_reference: expected a compression rate > 0, got {reference}")
            if not self.sigma_target > reference:
                raise PrunekitError(f"sigma_reference: expected a compression below sigma_target="
                                    f"{self.sigma_target:g} (a one-shot run trains as many cycles as an iterative run "
                                    f"from sigma_reference to sigma_target), got {reference:g}")
            return num_prunes(reference, self.sigma_target, self.rho) + 1
        return len(self.widths(total_width, total_fan))

    def reference(self, total_width: int, total_fan: int) -> float:
        """The compression a one-shot run's cycle count is measured from: ``sigma_reference``, or the adapters'
        starting compression when it is None."""
        return compression(total_fan, total_width) if self.sigma_reference is None else self.sigma_reference

    def prune_after(self, total_width: int, total_fan: int) -> dict[int, int]:
        """Training cycle -> total width to prune to once that cycle has trained."""
        widths = self.widths(total_width, total_fan)
        return {c: w for c, w in enumerate(widths[1:])}
