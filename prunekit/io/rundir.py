"""A run directory: everything a run writes, written atomically (temp file + rename), and nothing else touched.

::

    runs/<name>/
      .prunekit-run.json         written first: run id, creation time, and the manifest of every file prunekit wrote
      .prunekit-run.lock         flock'ed while a process writes the run (see runlock.py)
      recipe.resolved.yaml       the recipe after --set overrides and defaults
      metrics.jsonl              one line per epoch and per cycle
      metrics.csv                one row per cycle (the cycle lines of metrics.jsonl, for spreadsheets)
      classes.json               the task's class names (label k is classes[k]), for prunekit predict
      plan.json                  the pruning plans, replayable on a fresh model (prunekit.replay)
      adapters/cycle_K.safetensors   trained parameters (adapters + head) at the end of cycle K
      model/cycle_K.safetensors      instead, when the run prunes the backbone: the whole pruned model
      report.md                  per cycle: sigma, params, MACs, latency, top-1, file size, wall time
      plots/neurons_per_adapter.png  (units_per_group.png when the run prunes the backbone)
      tensorboard/events.*       TensorBoard scalars (output.tensorboard: true)
      export/cycle_K.pt|.onnx    prunekit export
      resume.pt                  while running: the state after the last finished epoch; teacher.safetensors too
      DONE                       written last: the run finished

prunekit deletes or replaces only what it can prove it wrote. A folder is a run directory when it holds a valid
``.prunekit-run.json``; ``--overwrite`` replaces only such a folder, and only the files its manifest lists (with
their temporary files); any other file inside makes it refuse. A folder without the marker (a project folder, a run
of an older prunekit) is never written into unless it is empty. In a distributed run only rank 0 holds a writing
``RunDir``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any, Iterator, Mapping

import torch

from ..registry import PrunekitError
from .files import RunWriteError, _write_error, atomic_write_bytes, atomic_write_text, save_safetensors
from .runlock import LOCK_FILE, RunLock, RunLockedError, holder_of
from .runpaths import (describe_contents, inside, is_temp_of, json_default, nearest_existing)

__all__ = ["RunDir", "MARKER", "NotARunDirError"]

MARKER = ".prunekit-run.json"
MARKER_FORMAT = "prunekit.run/1"


class NotARunDirError(PrunekitError):
    """A folder prunekit did not create as a run directory (no valid ``.prunekit-run.json``)."""


# ---------------------------------------------------------------------------------------------------------------------
# the run directory

class RunDir:
    """Writes of one run. ``write=False`` (non-zero ranks of a distributed run) turns every write into a no-op.

    Reading (``read_metrics``, ``resolved_recipe``, ``finished``) works on any folder; writing needs :meth:`create`
    (a new run, or ``overwrite`` of a run directory) or :meth:`open_for_resume` first, which take the lock and
    record every file written afterwards in the manifest. :meth:`close` releases the lock.
    """

    DONE = "DONE"

    def __init__(self, path: str | Path, write: bool = True):
        self.path = Path(path)
        self.write = write
        self._lock: RunLock | None = None
        self._marker: dict[str, Any] | None = None

    # -- what a folder is ---------------------------------------------------------------------------------------------

    def marker(self) -> dict[str, Any] | None:
        """The run's ``.prunekit-run.json`` when it is valid (every manifest entry a relative path inside)."""
        try:
            m = json.loads((self.path / MARKER).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not (isinstance(m, dict) and m.get("format") == MARKER_FORMAT and isinstance(m.get("run_id"), str)
                and isinstance(m.get("files"), list) and all(isinstance(f, str) for f in m["files"])):
            return None
        if not all(inside(f) for f in m["files"]):
            return None
        return m

    @property
    def is_run(self) -> bool:
        return self.marker() is not None

    @property
    def run_id(self) -> str | None:
        m = self._marker or self.marker()
        return None if m is None else m["run_id"]

    @property
    def finished(self) -> bool:
        return (self.path / self.DONE).exists()

    def require_run(self, context: str = "") -> dict[str, Any]:
        """The marker, or :class:`NotARunDirError` saying what the folder holds instead."""
        if not self.path.is_dir():
            raise NotARunDirError(f"{context}{self.path}: no such run directory")
        m = self.marker()
        if m is None:
            raise NotARunDirError(f"{context}{self.path} is not a prunekit run directory: {self._not_a_run_reason()}"
                                  "; nothing was changed")
        return m

    def _not_a_run_reason(self) -> str:
        if (self.path / MARKER).exists():
            why = f"its {MARKER} is unreadable or not prunekit's"
        elif (self.path / "recipe.resolved.yaml").exists():
            why = f"no {MARKER}: its recipe.resolved.yaml was written by another tool or an older prunekit"
        else:
            why = f"no {MARKER}"
        entries = describe_contents(self.path) if any(self.path.iterdir()) else "nothing"
        return f"it holds {entries} ({why}); prunekit only writes into run directories it created"

    def foreign_entries(self, marker: dict[str, Any]) -> list[str]:
        """Entries of the run directory that prunekit did not write (not in the manifest), as relative paths."""
        own = set(marker["files"]) | {MARKER, LOCK_FILE}
        own_dirs = {str(PurePath(f).parent) for f in own} - {"."}
        own_dirs |= {str(p) for d in own_dirs for p in PurePath(d).parents} - {"."}
        foreign: list[str] = []
        for top, dirs, files in os.walk(self.path):
            rel_top = os.path.relpath(top, self.path)
            for d in sorted(dirs):
                rel = d if rel_top == "." else f"{rel_top}/{d}"
                if rel not in own_dirs or os.path.islink(os.path.join(top, d)):
                    foreign.append(rel + "/")
            dirs[:] = [d for d in dirs if (d if rel_top == "." else f"{rel_top}/{d}") in own_dirs
                       and not os.path.islink(os.path.join(top, d))]
            for f in sorted(files):
                rel = f if rel_top == "." else f"{rel_top}/{f}"
                if rel not in own and not is_temp_of(rel, own):
                    foreign.append(rel)
        return sorted(foreign)

    def progress(self) -> str:
        """How far the run got, from ``metrics.jsonl`` and ``DONE``."""
        try:
            records = self.read_metrics()
        except (OSError, ValueError):
            records = []
        cycles = [r["cycle"] for r in records if r.get("type") == "cycle"]
        epochs = sum(1 for r in records if r.get("type") == "epoch")
        done = "finished (DONE written)" if self.finished else "not finished (no DONE)"
        if not (self.path / "metrics.jsonl").exists():
            return f"no metrics.jsonl, {done}"
        return (f"{len(cycles)} cycle{'s' if len(cycles) != 1 else ''} finished"
                f"{f' (last: cycle {cycles[-1]})' if cycles else ''}, {epochs} epoch{'s' if epochs != 1 else ''} "
                f"logged in metrics.jsonl, {done}")

    # -- taking it over ------------------------------------------------------------------------------------------------

    @classmethod
    def check_target(cls, path: str | Path, overwrite: bool = False, check_lock: bool = True) -> None:
        """Whether a new run may be written at ``path``; reads only. Raises with what is there and what to do.

        ``check_lock=False``: the caller holds the lock itself.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise NotARunDirError(f"output: {path} is a file, not a run directory; nothing was changed")
        if not path.exists() or not any(p.name != LOCK_FILE for p in path.iterdir()):
            where = nearest_existing(path)
            if not os.access(where, os.W_OK | os.X_OK):
                raise RunWriteError(f"output: cannot create the run directory {path}: {where} is not writable "
                                    "(read-only file system or no permission); nothing was changed")
            holder = holder_of(path) if path.exists() and check_lock else None
            if holder is not None:
                raise RunLockedError(path, holder)
            return
        rd = cls(path)
        m = rd.marker()
        if m is None:
            raise NotARunDirError(f"output: {path} is not a prunekit run directory: {rd._not_a_run_reason()}; "
                                  "nothing was changed. Choose an empty or new folder with --out or output.run_name"
                                  + (" (--overwrite only replaces prunekit run directories)" if overwrite else ""))
        holder = holder_of(path) if check_lock else None
        if holder is not None:
            raise RunLockedError(path, holder)
        if not overwrite:
            if rd.finished:
                raise PrunekitError(f"output: {path} already holds a finished run; nothing was changed. Pass "
                                    "--overwrite to replace it, or --out / output.run_name to write elsewhere")
            raise PrunekitError(f"output: {path} already holds an unfinished run ({rd.progress()}); nothing was "
                                f"changed. `prunekit run --resume {path}` continues it; --overwrite replaces it, or "
                                "--out / output.run_name writes elsewhere")
        foreign = rd.foreign_entries(m)
        if foreign:
            raise PrunekitError(f"output: {path} holds files prunekit did not write: "
                                f"{describe_contents(path, foreign)}; nothing was changed. --overwrite only replaces "
                                "what prunekit wrote: move those files out, or write elsewhere with --out / "
                                "output.run_name")
        if not os.access(path, os.W_OK | os.X_OK):
            raise RunWriteError(f"output: cannot replace the run in {path}: not writable (read-only file system or "
                                "no permission); nothing was changed")

    def create(self, overwrite: bool = False) -> "RunDir":
        """Start a new run here: lock the folder, remove the previous run's files (``overwrite``), write the marker.

        The checks of :meth:`check_target` are repeated under the lock, so two processes starting at once cannot
        both pass them.
        """
        if not self.write:
            return self
        self.check_target(self.path, overwrite)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _write_error(self.path, e) from None
        self._take_lock()
        try:
            self.check_target(self.path, overwrite, check_lock=False)
            old = self.marker()
            if old is not None:
                self._remove_files(old)
            self._marker = {"format": MARKER_FORMAT, "run_id": uuid.uuid4().hex,
                            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "host": socket.gethostname(), "pid": os.getpid(), "files": []}
            self._write_marker()
        except BaseException:
            self.close()
            raise
        return self

    def open_for_resume(self, context: str = "--resume: ") -> "RunDir":
        """Lock an existing run directory to continue it; files written from now on join its manifest."""
        if not self.write:
            return self
        self.require_run(context)
        self._take_lock()
        self._marker = self.require_run(context)  # read again under the lock
        return self

    def _take_lock(self) -> None:
        try:
            self._lock = RunLock(self.path).acquire()
        except OSError as e:
            raise _write_error(self.path / LOCK_FILE, e) from None

    @property
    def stale_lock(self) -> dict[str, Any]:
        """The lock record of a writer that was killed, when this process took its lock over."""
        return self._lock.stale if self._lock is not None else {}

    def _remove_files(self, marker: dict[str, Any]) -> None:
        own = set(marker["files"])
        for top, _, files in os.walk(self.path):
            rel_top = os.path.relpath(top, self.path)
            for f in files:
                rel = f if rel_top == "." else f"{rel_top}/{f}"
                if rel in own or is_temp_of(rel, own):
                    (self.path / rel).unlink()
        parents = {PurePath(f).parent for f in own}
        parents |= {p for d in parents for p in d.parents}
        for d in sorted(parents - {PurePath(".")}, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                (self.path / d).rmdir()  # only when empty

    def _write_marker(self) -> None:
        atomic_write_text(self.path / MARKER, json.dumps(self._marker, indent=1) + "\n")

    def _register(self, path: Path) -> None:
        """Add ``path`` to the manifest before it is first written (so a kill mid-write leaves it accounted for)."""
        if self._marker is None:
            raise PrunekitError(f"{self.path}: write before RunDir.create() / open_for_resume() (internal error)")
        rel = path.relative_to(self.path).as_posix()
        if rel not in self._marker["files"]:
            self._marker["files"].append(rel)
            self._write_marker()

    def adopt(self, path: Path) -> None:
        """Add a file another library just created inside the run directory to the manifest (TensorBoard names its
        event file as it creates it, so it cannot be registered before its first write); a no-op without writes."""
        if not self.write:
            return
        path = Path(path)
        if not path.resolve().is_relative_to(self.path.resolve()) or not path.is_file():
            raise PrunekitError(f"{self.path}: cannot adopt {path}: not a file inside the run directory (internal "
                                "error)")
        self._register(self.path / path.resolve().relative_to(self.path.resolve()))

    def close(self) -> None:
        """Remove temporary files this process left (a failed write) and release the lock."""
        if self._marker is not None and self.path.is_dir():
            own = set(self._marker["files"])
            for top, _, files in os.walk(self.path):
                for f in files:
                    if is_temp_of(os.path.relpath(os.path.join(top, f), self.path), own):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(top, f))
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writing -------------------------------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    def resolved_recipe(self, context: str = "") -> Path:
        """``recipe.resolved.yaml``; a clear error (prefixed with ``context``) when this is not a run directory."""
        path = self.path / "recipe.resolved.yaml"
        if not path.is_file():
            raise PrunekitError(f"{context}{self.path} is not a prunekit run directory (no recipe.resolved.yaml)")
        return path

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """``with rundir.writing('plan.json') as path: ...`` for writers outside this class; errors become
        :class:`RunWriteError` and their temporary files are removed."""
        path = self.path / name
        self._register(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield path
        except OSError as e:
            for tmp in path.parent.glob(f"*{path.name}.tmp*"):
                if is_temp_of(tmp.relative_to(self.path).as_posix(), {path.relative_to(self.path).as_posix()}):
                    tmp.unlink(missing_ok=True)
            raise _write_error(path, e) from None

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path / name
        if self.write:
            self._register(path)
            atomic_write_bytes(path, data)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def save_tensors(self, path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                     ) -> int | None:
        """``save_safetensors`` into the run directory; returns the size (None when this process does not write)."""
        if not self.write:
            return None
        self._register(path)
        return save_safetensors(path, tensors, metadata)

    def save_plans(self, plans) -> None:
        if self.write:
            from ..core.plan import Plan

            with self.writing("plan.json") as path:
                Plan.save_all(plans, path)

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=1, default=json_default) + "\n")

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        if not self.write:
            return
        path = self.path / "metrics.jsonl"
        self._register(path)
        try:
            with open(path, "a") as f:
                f.write(json.dumps(dict(record), default=json_default) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _write_error(path, e) from None

    def truncate_metrics(self, nbytes: int) -> None:
        """Drop what was logged after ``nbytes`` (lines written after the resume state was saved)."""
        if self.write:
            with open(self.path / "metrics.jsonl", "r+b") as f:
                f.truncate(nbytes)

    def metrics_digest(self, nbytes: int) -> str:
        """sha256 of the first ``nbytes`` of ``metrics.jsonl`` (what a resume state expects to find)."""
        with open(self.path / "metrics.jsonl", "rb") as f:
            return hashlib.sha256(f.read(nbytes)).hexdigest()

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def adapter_file(self, cycle: int) -> Path:
        return self.path / "adapters" / f"cycle_{cycle}.safetensors"

    def model_file(self, cycle: int) -> Path:
        """The whole pruned model of cycle ``cycle`` (a run that prunes the backbone)."""
        return self.path / "model" / f"cycle_{cycle}.safetensors"

    def remove(self, name: str) -> None:
        if self.write:
            (self.path / name).unlink(missing_ok=True)

    def finish(self) -> None:
        self.write_text(self.DONE, datetime.now(timezone.utc).isoformat() + "\n")
