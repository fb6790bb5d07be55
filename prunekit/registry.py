"""Name -> object registries with did-you-mean errors, open to other packages through entry points.

Scorers, scopes, strategies, methods, datasets, model builders and group sources are registered by name (attention
head layouts by class, :class:`TypeRegistry`) so that recipes and the CLI can refer to them as strings, and so that a
user can add their own with one ``register_*`` call (or, from an installed package, an entry point in the matching
``prunekit.*`` group). A duplicate name raises instead of silently replacing an entry, and an unknown name raises
with the closest registered names (unlike timm's bare ``Unknown model (%s)``).

Every registry loads its built-ins on first lookup: it names the modules that register them (``builtins=``), and
the first ``get`` / ``names`` / ``in`` imports them, then the installed entry points. So a lookup in a fresh
interpreter never depends on what happened to be imported before (``load_pruned`` in a new process finds the
``backbone`` group source without anyone importing :mod:`prunekit.groups.channels` first).

Where a recipe may name a function, :func:`import_object` also takes a ``package.module:function`` path to the
user's own code.

The error types live in :mod:`prunekit.errors`.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable, Generic, Hashable, Iterator, Sequence, TypeVar

from .errors import PrunekitError, UnknownNameError, did_you_mean

__all__ = ["Registry", "TypeRegistry", "import_object", "is_import_path", "PrunekitError", "UnknownNameError",
           "did_you_mean"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind (``kind`` names it in error messages).

    Args:
        kind: what the registry holds, e.g. ``'scorer'``.
        entry_point_group: optional ``importlib.metadata`` entry-point group; its entries are imported the first time
            the registry is read, so a third-party package can add entries by being installed.
        builtins: the modules (dotted names) whose import registers the built-in entries; imported the first time the
            registry is read, before the entry points.
        load_builtins: optional callable that registers built-in entries a module import cannot (the strategies,
            found by file location); called after ``builtins`` are imported.
        import_paths: whether :meth:`get` also takes a ``package.module:function`` path (registries of functions:
            scorers, scopes), importing it with :func:`import_object`.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, *, builtins: Sequence[str] = (),
                 load_builtins: Callable[[], None] | None = None, import_paths: bool = False):
        self.kind = kind
        self.import_paths = import_paths
        self.entry_point_group = entry_point_group
        self.builtins = tuple(builtins)
        self._load_builtins = load_builtins
        self._entries: dict[Any, T] = {}
        self._loaded_entry_points = False

    def _check_key(self, name: Any) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name must be a Python identifier, got {name!r}")

    def _label(self, name: Any) -> str:
        return repr(name)

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; used bare or as a decorator (``@registry.register('name')``)."""
        self._check_key(name)

        def _add(o: T) -> T:
            if name in self._entries and not overwrite and self._entries[name] is not o:
                raise ValueError(f"{self.kind} {self._label(name)} is already registered; pass overwrite=True to "
                                 "replace it")
            self._entries[name] = o
            return o

        return _add if obj is None else _add(obj)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True  # first: a built-in module that reads the registry while importing sees it
        for module in self.builtins:
            importlib.import_module(module)
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
        """The entry called ``name`` (or, with ``import_paths``, the function at a ``module:function`` path); raises
        :class:`UnknownNameError` with close matches, or :class:`PrunekitError` for a path that does not import."""
        if self.import_paths and is_import_path(name):
            return import_object(name, self.kind)
        self._load_entry_points()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r};{did_you_mean(str(name), names)} allowed: {', '.join(names)}"
            ) from None

    def find(self, name: Hashable, default: T | None = None) -> T | None:
        """The entry called ``name``, or ``default``; built-ins and entry points load first, as for :meth:`get`."""
        self._load_entry_points()
        return self._entries.get(name, default)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries, key=str)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]


class TypeRegistry(Registry[T]):
    """A registry keyed by class (exact type) instead of by name: the per-class layouts (attention head layouts)."""

    def _check_key(self, name: Any) -> None:
        if not isinstance(name, type):
            raise ValueError(f"{self.kind}: expected a class, got {name!r}")

    def _label(self, name: Any) -> str:
        return f"for {name.__module__}.{name.__qualname__}"

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(f"{c.__module__}.{c.__qualname__}" for c in self._entries)

    def classes(self) -> list[type]:
        self._load_entry_points()
        return sorted(self._entries, key=lambda c: f"{c.__module__}.{c.__qualname__}")

    def items(self) -> list[tuple[type, T]]:
        return [(c, self._entries[c]) for c in self.classes()]


def is_import_path(value: object) -> bool:
    """Whether ``value`` is a ``package.module:attribute`` path rather than a registered name."""
    return isinstance(value, str) and ":" in value


def import_object(path: str, kind: str = "object") -> Any:
    """The callable at ``package.module:attribute`` (``attribute`` may be dotted); imports the module.

    Args:
        path: the path, e.g. ``'my_pkg.scores:weight_norm'``.
        kind: what the object is for, in messages (``scorer``).

    Raises:
        PrunekitError: naming the path and why it failed (no such module, no such attribute, an error while
            importing, not callable); the caller prefixes the key that held it (``strategy.scorer: ...``).
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise PrunekitError(f"{path!r} is not a 'package.module:function' path (a module and a {kind} joined by ':')")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = f"no module named {e.name!r}" if e.name else str(e)
        raise PrunekitError(f"cannot import {kind} {path!r}: {missing} (is its package installed, or its folder on "
                            "PYTHONPATH?)") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say so, in one line
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise PrunekitError(f"cannot import {kind} {path!r}: importing {module_name!r} raised "
                            f"{type(e).__name__}: {detail}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n))]
            raise PrunekitError(f"cannot import {kind} {path!r}: {module_name!r} has no attribute {part!r};"
                                f"{did_you_mean(part, names)}".rstrip(";"))
        obj = getattr(obj, part)
    if not callable(obj):
        raise PrunekitError(f"{kind} {path!r} is a {type(obj).__name__}, not a callable")
    return obj
