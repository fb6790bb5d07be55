"""Atomic file writes: a file holds its new content or what it held before, never a part.

``atomic_write(path, write)`` lets ``write(tmp)`` fill a temporary file beside ``path`` (``.NAME.tmpPID``: the same
folder, so the rename cannot cross file systems), flushes it to disk and renames it over ``path``; on any failure the
temporary file is removed and the error goes to the caller. Every file prunekit writes goes through it (run
directories wrap its ``OSError`` in :class:`~prunekit.io.rundir.RunWriteError`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "temp_name"]


def temp_name(path: Path) -> Path:
    """The temporary file :func:`atomic_write` uses for ``path`` in this process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` and one rename; a failure leaves ``path`` as it was and no temp file."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
