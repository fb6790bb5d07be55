"""One writer per run directory: an advisory ``flock`` on ``<run>/.prunekit-run.lock``.

The lock file holds who took it (pid, host, start time, command). The kernel releases a ``flock`` when its process
dies, however it dies, so a lock left behind by a killed run is not "held": the next writer takes it over and says
whose it was. The lock file itself is never deleted (deleting it would let two processes lock two different files of
the same name); a clean release empties it, so a non-empty unheld lock file means its writer was killed.

Only one process per run writes (rank 0 under torchrun), and only that process takes the lock.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..registry import PrunekitError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "holder_of"]

LOCK_FILE = ".prunekit-run.lock"


class RunLockedError(PrunekitError):
    """Another live process is writing the run directory."""

    def __init__(self, run_dir: Path, holder: dict[str, Any]):
        who = describe_holder(holder)
        super().__init__(f"output: {run_dir} is locked: another prunekit process is writing it ({who}); nothing was "
                         "changed. Wait for it to finish, or stop it and continue with "
                         f"`prunekit run --resume {run_dir}`")
        self.run_dir = run_dir
        self.holder = holder


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        holder = json.loads(raw.decode()) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"raw": raw[:200].decode(errors="replace")}
    return holder if isinstance(holder, dict) else {}


def holder_of(run_dir: Path) -> dict[str, Any] | None:
    """Who holds the lock of ``run_dir`` now (None when nobody does); reads only, creates nothing."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run directory, held from :meth:`acquire` until :meth:`release` (or process death).

    Args:
        run_dir: the run directory; it must exist.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.stale: dict[str, Any] = {}  # the holder recorded by a writer that was killed, if any

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLockedError` naming its holder; a dead holder's lock is taken over."""
        if fcntl is None:  # pragma: no cover
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(10):  # a reader's brief shared lock (holder_of) must not read as a writer
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 9:
                        raise
                    time.sleep(0.02)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(self.run_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self.stale = _read_holder(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:500]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (a clean exit) and unlock it; the file stays."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a read-only or full disk: the lock is released all the same
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
