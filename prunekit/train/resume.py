"""Resume state: what ``prunekit run --resume RUN_DIR`` needs to continue exactly where a run stopped.

After every epoch the run directory gets ``resume.pt`` (atomically: temp file + rename), holding

- where: cycle and last finished epoch, the trainer's per-cycle best / last metrics and its global step;
- the model: trained parameters and all buffers (the frozen backbone is rebuilt from the recipe, and the pruned
  structure by replaying the plans of the finished cycles, as ``prunekit eval`` does);
- optimizer and LR-scheduler state, the engine's history (plans, widths) and its scorer generator;
- RNG states of every rank (python, numpy, torch, CUDA) and of the data loader's shuffling generator;
- the size of ``metrics.jsonl`` at that point (lines written after it are dropped on resume) and a digest of it;
- provenance: the resolved recipe (and its digest) and the run id of the run directory that saved it. ``--resume``
  refuses a state whose recipe differs from ``recipe.resolved.yaml`` (naming the keys), one saved by another run
  directory, or a ``metrics.jsonl`` that no longer starts with what was logged when the state was saved.

A kill at any point (mid-epoch, mid-prune, while writing) leaves the previous ``resume.pt`` intact; resuming
repeats at most one epoch and, on CPU with ``train.deterministic``, ends with the same weights and metrics as a run
that was never interrupted.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..registry import PrunekitError
from ..io.files import atomic_write_bytes
from ..io.statedict import load_into, with_versions

__all__ = ["STATE_FILE", "TEACHER_FILE", "FORMAT", "ResumeMismatchError", "capture_rng", "restore_rng", "save_state",
           "load_state", "model_state", "load_model_state", "recipe_digest", "recipe_differences", "check_provenance"]

STATE_FILE = "resume.pt"
TEACHER_FILE = "teacher.safetensors"  # a distilling run's teacher, written once at its first prune (run/teacher.py)
FORMAT = "prunekit.resume/2"


class ResumeMismatchError(PrunekitError):
    """A resume state that does not belong to the run directory it sits in, or to its recipe."""


def capture_rng(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state that decides what happens next on this process (weights_only-loadable)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": None if loader_generator is None else loader_generator.get_state(),
    }
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and state["loader"] is not None:
        loader_generator.set_state(state["loader"])


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trained parameters and every buffer (what differs from a freshly built model with the same plans)."""
    out = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    out.update({n: b.detach().cpu().clone() for n, b in model.named_buffers()})
    return with_versions(out, model)


def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    trained = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    missing, unexpected = sorted(trained - tensors.keys()), sorted(tensors.keys() - dict(model.state_dict()).keys())
    if missing or unexpected:
        raise PrunekitError(f"{source}: the saved state does not fit the rebuilt model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); was the recipe or prunekit changed since the run started?")
    load_into(model, tensors, strict=False)


def save_state(path: Path, state: dict[str, Any]) -> int:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return len(data)


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise PrunekitError(f"{path}: cannot read the resume state ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(state, dict) and state.get("format") == "prunekit.resume/1":
        raise PrunekitError(f"{path}: written by an older prunekit without the recipe it was saved with, so it cannot "
                            "be checked against this run; nothing was changed. Start the run again (--overwrite)")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PrunekitError(f"{path}: not a prunekit resume state (expected format {FORMAT!r})")
    return state


def recipe_digest(recipe: dict[str, Any]) -> str:
    """sha256 of the resolved recipe (keys sorted), as stored in a resume state."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, path) if isinstance(v, dict) and v else {path: v})
    return out


def recipe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``train.seed: 0 in resume.pt, 1 in recipe.resolved.yaml`` for every key whose value differs."""
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    return [f"{k}: {a.get(k, missing)!r} in resume.pt, {b.get(k, missing)!r} in recipe.resolved.yaml"
            .replace(repr(missing), "(absent)") for k in sorted(a.keys() | b.keys())
            if a.get(k, missing) != b.get(k, missing)]


def check_provenance(state: dict[str, Any], path: Path, recipe: dict[str, Any], run_id: str | None,
                     metrics_size: int | None, metrics_digest) -> None:
    """Refuse a state saved by another run directory, with another recipe, or for another ``metrics.jsonl``.

    Args:
        state: the loaded resume state.
        path: its file (for messages).
        recipe: the resolved recipe of the run directory now (``recipe_to_dict`` of recipe.resolved.yaml).
        run_id: the run directory's id (``.prunekit-run.json``).
        metrics_size: bytes in ``metrics.jsonl`` now (None: the file is missing).
        metrics_digest: callable ``nbytes -> sha256`` of the first bytes of ``metrics.jsonl``.
    """
    problems = []
    if state.get("run_id") != run_id:
        problems.append(f"it was saved by run {state.get('run_id')}, but this directory is run {run_id} (a resume.pt "
                        "copied from another run?)")
    if state.get("recipe_digest") != recipe_digest(recipe) or state.get("recipe") != recipe:
        diff = recipe_differences(state.get("recipe") or {}, recipe)
        problems.append("its recipe differs from recipe.resolved.yaml: " + ("; ".join(diff) if diff else
                                                                             "(digest differs)"))
    if problems:
        raise ResumeMismatchError(f"--resume: {path} does not belong to this run: {' and '.join(problems)}; nothing "
                                  "was changed (resuming would mix two runs). Start again with the recipe and "
                                  "--overwrite, or resume the run that wrote it")
    want = state["metrics_bytes"]
    if metrics_size is None:
        raise ResumeMismatchError(f"--resume: {path.parent / 'metrics.jsonl'} is missing, but resume.pt expects its "
                                  f"first {want} bytes (the epochs and cycles logged so far); nothing was changed. "
                                  "Restore the file, or start again with --overwrite")
    if metrics_size < want or metrics_digest(want) != state.get("metrics_sha256"):
        raise ResumeMismatchError(f"--resume: {path.parent / 'metrics.jsonl'} no longer starts with what was logged "
                                  f"when resume.pt was saved (its first {want} bytes; it holds {metrics_size}): it "
                                  "was edited or truncated; nothing was changed. Restore it, or start again with "
                                  "--overwrite")
