"""What a kind of group may lose: the per-kind rules the core applies without knowing what a group is.

A group brings a :class:`Policy`; selection (scopes), budgets and plans only read it::

    adapter   Policy(min_width=0, on_empty=<remove the emptied adapter wrappers>)     # may vanish (TINA, Fig. 4)
    channel   Policy(min_width=1, round_to=8, max_ratio=0.75)                       # a layer keeps a channel
    head      Policy(min_width=1)                                                   # an attention keeps a head

Widths a group may take, starting from ``original`` units: ``original`` itself, or any multiple of ``round_to``
between :meth:`Policy.lowest` and the current width. ``lowest`` is ``min_width`` raised to what ``max_ratio`` allows
(``ceil(original * (1 - max_ratio))``) and rounded up to a multiple of ``round_to``. Example: 100 channels,
``round_to=8``, ``max_ratio=0.75``: lowest = roundup(max(1, 25), 8) = 32; allowed widths 100, 96, 88, ..., 32.

The rounding helpers of the package live here too (:func:`round_half_up`), so schedule and scopes share them without
importing each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..registry import PrunekitError

__all__ = ["Policy", "CHANNEL_POLICY", "UnreachableTargetError", "round_half_up", "policy_of", "lowest_width",
           "removal_steps"]

class UnreachableTargetError(PrunekitError, ValueError):
    """A pruning target the groups' limits cannot reach; the message says the most that can be reached."""


if TYPE_CHECKING:  # torch is not imported for the policy rules alone (``prunekit list strategies`` stays fast)
    from torch import nn

OnEmpty = Callable[["nn.Module", Sequence[str]], list[str]]


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``, so ``round_half_up(2.5) == 3`` (Python's ``round`` goes to even)."""
    # the epsilon absorbs float error in fraction * n (e.g. (17 / 35) * 35 = 16.999999999999996)
    return math.floor(x + 0.5 + 1e-9)


@dataclass(frozen=True)
class Policy:
    """Limits and the meaning of an emptied group, for one kind of group.

    Attributes:
        min_width: units a group always keeps (0: it may lose all of them; then ``on_empty`` says what that means).
        round_to: widths are kept a multiple of this (8 for tensor-core friendly layers); 1 allows any width.
        max_ratio: the most a group may lose over a whole run, as a fraction of its original width.
        on_empty: ``fn(model, group_names) -> removed names``, called by :meth:`~prunekit.core.plan.Plan.apply` for
        groups
            that lost every unit (the adapter policy replaces emptied adapter wrappers by their sub-layer). A policy
            with ``min_width >= 1`` never sees an emptied group.
        check_forward: whether a prune of such groups is checked by a forward of the example inputs (False for
            groups whose removal keeps the model well-formed by construction, such as the adapters').
    """

    min_width: int = 1
    round_to: int = 1
    max_ratio: float = 1.0
    on_empty: OnEmpty | None = None
    check_forward: bool = True

    def __post_init__(self):
        if not isinstance(self.min_width, int) or self.min_width < 0:
            raise PrunekitError(f"min_width: expected an integer >= 0, got {self.min_width!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise PrunekitError(f"round_to: expected an integer >= 1, got {self.round_to!r}")
        if not 0.0 <= float(self.max_ratio) <= 1.0:
            raise PrunekitError(f"max_ratio: expected a fraction in [0, 1], got {self.max_ratio!r}")
        if self.min_width == 0 and self.on_empty is None:
            raise PrunekitError("min_width: 0 lets a group lose every unit; give on_empty= to say what an emptied "
                                "group becomes (e.g. an adapter wrapper replaced by its sub-layer)")

    def lowest(self, original: int) -> int:
        """Smallest width a group that started with ``original`` units may reach (see the module docstring)."""
        return lowest_width(original, self.min_width, self.round_to, self.max_ratio)


CHANNEL_POLICY = Policy()


def lowest_width(original: int, min_width: int = 1, round_to: int = 1, max_ratio: float = 1.0) -> int:
    floor = max(min_width, math.ceil(original * (1.0 - max_ratio) - 1e-9))
    floor = -(-floor // round_to) * round_to
    return min(original, floor)


def policy_of(group: Any) -> tuple[int, int, float, OnEmpty | None]:
    """``(min_width, round_to, max_ratio, on_empty)`` of any group's policy; ``None`` fields read as no limit, so
    policy classes other than :class:`Policy` with the same field names work too."""
    p = getattr(group, "policy", None)
    if p is None:
        return 1, 1, 1.0, None
    round_to = getattr(p, "round_to", None) or 1
    max_ratio = getattr(p, "max_ratio", None)
    return (int(getattr(p, "min_width", 1)), int(round_to), 1.0 if max_ratio is None else float(max_ratio),
            getattr(p, "on_empty", None))


def removal_steps(width: int, lowest: int, round_to: int = 1) -> list[int]:
    """Allowed numbers of units to remove from a group of ``width``: 0, then every r with ``width - r >= lowest`` and
    ``width - r`` a multiple of ``round_to``, ascending.

    >>> removal_steps(10, 2, 4)
    [0, 2, 6]
    """
    if width <= lowest:
        return [0]
    first = width - (width // round_to) * round_to  # remove this many to land on a multiple
    steps = [0] + [r for r in range(first or round_to, width - lowest + 1, round_to)]
    return steps
