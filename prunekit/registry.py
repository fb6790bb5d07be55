"""Name -> object registries with did-you-mean errors.

Scorers, scopes and strategies are registered by name so that recipes and the CLI can refer to them as strings, and
so that a user can add their own with one call. A duplicate name raises instead of silently replacing an entry, and an
unknown name raises with the closest registered names (unlike timm's bare ``Unknown model (%s)``).
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class PrunekitError(Exception):
    """Base class of the errors prunekit raises on bad input."""


class UnknownNameError(PrunekitError, KeyError):
    """A name that is not registered; the message lists close matches and everything allowed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def did_you_mean(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """A ``did you mean 'x'?`` clause for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry(Generic[T]):
    """A named collection of objects of one kind (``kind`` names it in error messages).

    Args:
        kind: what the registry holds, e.g. ``'scorer'``.
        entry_point_group: optional ``importlib.metadata`` entry-point group; its entries are imported the first time
            the registry is read, so a third-party package can add entries by being installed.
        load_builtins: optional callable that registers the built-in entries, called the first time the registry is
            read (before the entry points).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 load_builtins: Callable[[], None] | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._load_builtins = load_builtins
        self._entries: dict[str, T] = {}
        self._loaded_entry_points = entry_point_group is None and load_builtins is None

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; used bare or as a decorator (``@registry.register('name')``)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name must be a Python identifier, got {name!r}")

        def _add(o: T) -> T:
            if name in self._entries and not overwrite and self._entries[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._entries[name] = o
            return o

        return _add if obj is None else _add(obj)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        if self._load_builtins is not None:
            self._load_builtins()
        if self.entry_point_group is None:
            return
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.dist is not None and ep.dist.name == "prunekit":
                # prunekit imports its own built-ins by their package name; the entries of a stale install (0.1
                # declared them as a top-level `strategies` package) would import a working directory's folder.
                continue
            # Loading the module runs its register() call; a broken plug-in must not hide the built-in entries.
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - report, don't crash the registry
                import warnings

                warnings.warn(f"could not load {self.kind} entry point {ep.name!r} ({ep.value}): {e}", stacklevel=2)

    def get(self, name: str) -> T:
        """The entry called ``name``; raises :class:`UnknownNameError` with close matches."""
        self._load_entry_points()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r};{did_you_mean(str(name), names)} allowed: {', '.join(names)}"
            ) from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]


def resolve(value: str | Callable, registry: Registry) -> Callable:
    """A registered name or a callable given directly (the user's own function)."""
    if callable(value):
        return value
    return registry.get(value)
