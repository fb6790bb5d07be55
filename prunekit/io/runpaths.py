"""Where a run goes and which names are prunekit's: run directory names, the entries of a folder in an error
message, and the rules that tell a manifest's files and their temporary files from anything else in a folder.
"""
from __future__ import annotations

from pathlib import Path, PurePath

import torch

from ..registry import PrunekitError

__all__ = ["check_run_name", "run_directory", "describe_contents", "nearest_existing", "inside", "is_temp_of",
           "json_default"]


def check_run_name(value: str, key: str) -> str:
    """A run directory name is one folder name inside ``output.dir``: not '.', '..', absolute or with a separator."""
    if value in ("", ".", "..") or PurePath(value).is_absolute() or "/" in value or "\\" in value or "\0" in value:
        raise PrunekitError(f"{key}: expected one folder name inside output.dir (no '/', not '.', '..' or an absolute "
                            f"path), got {value!r}; use --out for a run directory elsewhere")
    return value


def run_directory(output_dir: str, run_name: str | None, name: str) -> Path:
    """``output_dir/<run_name or name>``, refusing names that leave ``output_dir`` (also through a symbolic link)."""
    key, value = ("output.run_name", run_name) if run_name else ("name", name)
    path = Path(output_dir) / check_run_name(value, key)
    if path.exists() and not path.resolve().is_relative_to(Path(output_dir).resolve()):
        raise PrunekitError(f"{key}: {path} leads to {path.resolve()}, outside output.dir ({output_dir}); nothing "
                            "was changed. Use --out to name that folder directly")
    return path


def describe_contents(path: Path, names: list[str] | None = None, limit: int = 6) -> str:
    """``thesis.tex, data/ and 3 more``: the entries of ``path`` (or the given relative ``names``)."""
    if names is None:
        names = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in path.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def inside(rel: str) -> bool:
    p = PurePath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def is_temp_of(rel: str, own: set[str]) -> bool:
    """``.name.tmp<pid>``, ``.name.tmp.png`` or ``name.tmp`` next to a manifest file ``name``: prunekit's temp file."""
    p = PurePath(rel)
    base = p.name
    for candidate in (base[1:].split(".tmp", 1)[0] if base.startswith(".") else None,
                      base[: -len(".tmp")] if base.endswith(".tmp") else None):
        if candidate and str(p.with_name(candidate)) in own:
            return True
    return False


def json_default(o):
    if isinstance(o, float):
        return o
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
