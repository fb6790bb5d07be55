"""The files prunekit writes outside a run directory's bookkeeping: bytes and text written atomically with a named
error, and safetensors files marked as prunekit's (so a run directory can tell its own weights from a user's).

Every safetensors file prunekit writes carries ``written_by: prunekit`` and the module versions of the state dict
(:mod:`prunekit.io.statedict`) in its metadata; :func:`safetensors_metadata` reads a file's header without loading it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import torch

from ..atomic import atomic_write
from ..registry import PrunekitError
from .statedict import versions_metadata

__all__ = ["RunWriteError", "atomic_write_bytes", "atomic_write_text", "save_safetensors", "safetensors_metadata",
           "written_by_prunekit", "SAFETENSORS_MARK", "SAFETENSORS_MARK_VALUE", "read_lines"]

SAFETENSORS_MARK = "written_by"  # safetensors metadata key prunekit sets on every file it writes
SAFETENSORS_MARK_VALUE = "prunekit"


class RunWriteError(PrunekitError):
    """Writing into the run directory (or the checkpoint) failed: read-only file system, full disk, permissions."""


def _write_error(path: Path, e: OSError) -> RunWriteError:
    return RunWriteError(f"output: cannot write {path}: {e.strerror or e} (errno {e.errno}); its temporary file was "
                         "removed and what was written before is kept")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a part (:func:`~prunekit.atomic.atomic_write`); a
    failure is a :class:`RunWriteError` and leaves no temporary file."""
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        raise _write_error(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                     ) -> int:
    """Write tensors atomically, marked as prunekit's (:func:`written_by_prunekit`), with the module versions of a
    state dict's ``_metadata`` (:mod:`prunekit.io.statedict`); returns the size in bytes."""
    from safetensors.torch import save

    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta.update(versions_metadata(tensors))
    meta[SAFETENSORS_MARK] = SAFETENSORS_MARK_VALUE
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)
    return len(data)


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a .safetensors file (reads the header only); None when ``path`` is not one or has none."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n).decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


def written_by_prunekit(path: Path) -> bool:
    """Whether ``path`` is a .safetensors file whose metadata carries prunekit's mark (reads the header only)."""
    meta = safetensors_metadata(path)
    return meta is not None and meta.get(SAFETENSORS_MARK) == SAFETENSORS_MARK_VALUE


def read_lines(path: Path) -> list[str]:
    """The lines of a text file; a file that cannot be read or decoded is named in a :class:`PrunekitError`."""
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{path}: not readable ({type(e).__name__}: {e})") from None
