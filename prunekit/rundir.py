"""A run directory: everything a run writes, written atomically (temp file + rename).

::

    runs/<name>/
      recipe.resolved.yaml       the recipe after --set overrides and defaults
      metrics.jsonl              one line per epoch and per cycle
      plan.json                  the pruning plans, replayable on a fresh model (prunekit.replay)
      adapters/cycle_K.safetensors   trained parameters (adapters + head) at the end of cycle K
      report.md                  per cycle: trainable params, % of total, sigma, top-1, file size
      plots/neurons_per_adapter.png
      resume.pt                  while running: the state after the last finished epoch (see resume.py)
      DONE                       written last: the run finished

A finished run is never overwritten unless asked (``overwrite=True``); an unfinished one is not touched either
(``prunekit run --resume`` continues it). In a distributed run only rank 0 holds a writing ``RunDir``.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from .registry import PrunekitError

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_text", "save_safetensors"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                     ) -> int:
    """Write tensors atomically; returns the file size in bytes."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(path, data)
    return len(data)


class RunDir:
    """Writes of one run. ``write=False`` (non-zero ranks of a distributed run) turns every write into a no-op."""

    DONE = "DONE"

    def __init__(self, path: str | Path, write: bool = True):
        self.path = Path(path)
        self.write = write

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "RunDir":
        """A fresh run directory; refuses to touch an existing non-empty one unless ``overwrite``."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            finished = (path / cls.DONE).exists()
            if not overwrite:
                what = "a finished run" if finished else "an unfinished run"
                raise PrunekitError(f"output: {path} already holds {what}; nothing was changed. Pass --overwrite to "
                                    "replace it, or --out / output.run_name to write elsewhere")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def finished(self) -> bool:
        return (self.path / self.DONE).exists()

    def file(self, name: str) -> Path:
        return self.path / name

    def resolved_recipe(self, context: str = "") -> Path:
        """``recipe.resolved.yaml``; a clear error (prefixed with ``context``) when this is not a run directory."""
        path = self.path / "recipe.resolved.yaml"
        if not path.is_file():
            raise PrunekitError(f"{context}{self.path} is not a prunekit run directory (no recipe.resolved.yaml)")
        return path

    def write_text(self, name: str, text: str) -> Path:
        if self.write:
            atomic_write_text(self.path / name, text)
        return self.path / name

    def save_tensors(self, path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                     ) -> int | None:
        """``save_safetensors`` into the run directory; returns the size (None when this process does not write)."""
        return save_safetensors(path, tensors, metadata) if self.write else None

    def save_plans(self, plans) -> None:
        if self.write:
            from .plan import Plan

            Plan.save_all(plans, self.path / "plan.json")

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=1, default=_json_default) + "\n")

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        if not self.write:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(dict(record), default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def adapter_file(self, cycle: int) -> Path:
        return self.path / "adapters" / f"cycle_{cycle}.safetensors"

    def finish(self) -> None:
        self.write_text(self.DONE, datetime.now(timezone.utc).isoformat() + "\n")


def _json_default(o):
    if isinstance(o, float):
        return o
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
