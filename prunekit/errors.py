"""The errors prunekit raises on bad input, and the did-you-mean clause of their messages.

A leaf module: every layer (methods, datasets, the core, the run phases, the CLI) raises these without importing
anything above it. The CLI turns any :class:`PrunekitError` into one ``error: ...`` line and exit code 2. A message
names the field, the value and what is allowed (``train.lr: expected a float, got 'fast'``).
"""
from __future__ import annotations

import difflib

__all__ = ["PrunekitError", "UnknownNameError", "ConfigError", "did_you_mean", "problems_of"]


class PrunekitError(Exception):
    """Base class of the errors prunekit raises on bad input."""


class UnknownNameError(PrunekitError, KeyError):
    """A name that is not registered; the message lists close matches and everything allowed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(PrunekitError, ValueError):
    """Configuration values that do not validate (recipe keys, a method's or an ablation's options); each problem
    starts with the key's path, e.g. ``method.rank: expected an integer >= 1, got 0``.

    One error carries every problem found (``problems``), so a recipe with three mistakes is fixed in one attempt;
    its message is the problem itself when there is one, else ``N problems:`` and one indented line per problem.
    """

    def __init__(self, *problems: str):
        self.problems = [str(p) for p in problems] or ["invalid configuration"]
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{len(self.problems)} problems:\n  " + "\n  ".join(self.problems))

    def __reduce__(self):  # pickles with every problem (errors of ablation workers cross processes)
        return type(self), tuple(self.problems)


def problems_of(error: PrunekitError) -> list[str]:
    """The problems an error reports: a :class:`ConfigError`'s list, or any other error's message."""
    return list(error.problems) if isinstance(error, ConfigError) else [str(error)]




def did_you_mean(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """A ``did you mean 'x'?`` clause for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"
