"""Resume state: what ``prunekit run --resume RUN_DIR`` needs to continue exactly where a run stopped.

After every epoch the run directory gets ``resume.pt`` (atomically: temp file + rename), holding

- where: cycle and last finished epoch, the trainer's per-cycle best / last metrics and its global step;
- the model: trained parameters and all buffers (the frozen backbone is rebuilt from the recipe, and the pruned
  structure by replaying the plans of the finished cycles, as ``prunekit eval`` does);
- optimizer and LR-scheduler state, the engine's history (plans, widths) and its scorer generator;
- RNG states of every rank (python, numpy, torch, CUDA) and of the data loader's shuffling generator;
- the size of ``metrics.jsonl`` at that point (lines written after it are dropped on resume).

A kill at any point (mid-epoch, mid-prune, while writing) leaves the previous ``resume.pt`` intact; resuming
repeats at most one epoch and, on CPU with ``train.deterministic``, ends with the same weights and metrics as a run
that was never interrupted.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .registry import PrunekitError
from .rundir import atomic_write_bytes

__all__ = ["STATE_FILE", "FORMAT", "capture_rng", "restore_rng", "save_state", "load_state", "model_state",
           "load_model_state"]

STATE_FILE = "resume.pt"
FORMAT = "prunekit.resume/1"


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
    return out


def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    trained = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    missing, unexpected = sorted(trained - tensors.keys()), sorted(tensors.keys() - dict(model.state_dict()).keys())
    if missing or unexpected:
        raise PrunekitError(f"{source}: the saved state does not fit the rebuilt model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); was the recipe or prunekit changed since the run started?")
    model.load_state_dict(tensors, strict=False)


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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PrunekitError(f"{path}: not a prunekit resume state (expected format {FORMAT!r})")
    return state
