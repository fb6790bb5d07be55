"""The recipes shipped with prunekit, found by name from any working directory.

The source of truth is the checkout's top-level ``recipes/`` folder; a wheel installs it as the package data of
``prunekit.recipes`` (``prunekit/recipes/*.yaml``, see pyproject.toml). ``prunekit run quickstart`` (or
``quickstart.yaml``) takes the built-in recipe unless a file of that name exists where the command runs: a path that
exists wins. A built-in recipe's relative references (``model.pretrain: pretrain_mnist5k.yaml``) resolve next to it,
inside the package.
"""
from __future__ import annotations

from pathlib import Path

from ..registry import did_you_mean
from .spec import ConfigError

__all__ = ["builtin_recipes_dir", "builtin_recipes", "find_recipe"]


def builtin_recipes_dir() -> Path | None:
    """``prunekit/recipes`` of an installed wheel, else ``<checkout>/recipes`` (source checkout, editable install)."""
    here = Path(__file__).resolve().parents[1]  # the prunekit package folder
    for candidate in (here / "recipes", here.parent / "recipes"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return None


def builtin_recipes() -> dict[str, Path]:
    """Name (file stem) -> file of every built-in recipe."""
    d = builtin_recipes_dir()
    return {} if d is None else {p.stem: p for p in sorted(d.glob("*.yaml"))}


def find_recipe(arg: str) -> Path:
    """The recipe file ``arg`` names: an existing path, else a built-in recipe by name (``quickstart``,
    ``quickstart.yaml``)."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    builtins = builtin_recipes()
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name in builtins:
        return builtins[name]
    if path.exists():
        raise ConfigError(f"recipe: {str(arg)!r} is a folder, not a recipe file")
    hint = did_you_mean(name, list(builtins)) if path.parent == Path(".") else ""
    raise ConfigError(f"recipe: no such file {str(arg)!r}, and no built-in recipe of that name;{hint} built-in: "
                      f"{', '.join(builtins) or '(none found)'} (`prunekit list recipes`)")
