"""Record, the whole model: ``output.save_checkpoint`` (how a pretraining recipe produces a backbone).

The target is checked before the run starts (:func:`check_checkpoint_target`) and again when it is written: prunekit
replaces only a file it wrote (its safetensors metadata carries prunekit's mark) unless ``output.replace_checkpoint``.

The checkpoint carries what made it in its safetensors metadata (strings, like timm's ``pretrained_cfg``): the recipe,
the model, the data and classes, the epochs, and the final validation result (:func:`checkpoint_result` reads it back;
``prunekit ablate`` puts it in its tables as the backbone's row).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import PrunekitError, ConfigError
from .progress import ProgressReporter
from ..recipe.spec import Recipe
from ..io.rundir import RunDir
from ..io.files import RunWriteError, safetensors_metadata, save_safetensors, written_by_prunekit

__all__ = ["check_checkpoint_target", "save_checkpoint", "checkpoint_result", "RESULT_KEYS"]

# metadata written from the run's last cycle summary (``metrics.csv``'s columns); values are JSON
RESULT_KEYS = ("last_top1", "best_top1", "total_params", "wall_s")


def check_checkpoint_target(recipe: Recipe) -> None:
    """``output.save_checkpoint`` may replace only a file prunekit wrote, unless ``output.replace_checkpoint``."""
    if not recipe.output.save_checkpoint:
        return
    dest = Path(recipe.output.save_checkpoint).expanduser()
    if dest.is_dir():
        raise ConfigError(f"output.save_checkpoint: {str(dest)!r} is a folder; expected a file path, e.g. "
                          f"{str(dest / 'model.safetensors')!r}")
    if dest.exists() and not recipe.output.replace_checkpoint and not written_by_prunekit(dest):
        raise ConfigError(f"output.save_checkpoint: {str(dest)!r} exists and prunekit did not write it (its "
                          "safetensors metadata carries no prunekit mark); nothing was changed. Choose another path, "
                          "or set output.replace_checkpoint: true to replace it")
    where = dest.parent.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise RunWriteError(f"output.save_checkpoint: cannot write {str(dest)!r}: {where} is not writable (read-only "
                            "file system or no permission); nothing was changed")


def _metadata(recipe: Recipe, rundir: RunDir, cycles: list[dict[str, Any]]) -> dict[str, str]:
    meta = {"recipe": recipe.name, "model": recipe.model.name, "run_id": rundir.run_id or "",
            "data": recipe.data.name, "classes": json.dumps(recipe.data.classes),
            "epochs": json.dumps(len(cycles) * recipe.train.epochs), "seed": json.dumps(recipe.train.seed)}
    if cycles:
        meta.update({k: json.dumps(cycles[-1].get(k)) for k in RESULT_KEYS})
    return meta


def checkpoint_result(path: str | Path) -> dict[str, Any] | None:
    """What a checkpoint prunekit wrote says about its training (recipe, data, epochs, ``last_top1`` ...), or None
    when the file is missing, not prunekit's, or older than these fields. Reads the header only."""
    path = Path(path).expanduser()
    meta = safetensors_metadata(path) if written_by_prunekit(path) else None
    if meta is None or meta.get("last_top1", "null") == "null":  # older than these fields, or nothing measured
        return None
    out: dict[str, Any] = {k: meta.get(k, "") for k in ("recipe", "model", "run_id", "data")}
    for k in ("classes", "epochs", "seed") + RESULT_KEYS:
        try:
            out[k] = json.loads(meta[k]) if k in meta else None
        except ValueError:
            out[k] = None
    return out


def save_checkpoint(recipe: Recipe, model: nn.Module, rundir: RunDir, reporter: ProgressReporter,
                    cycles: list[dict[str, Any]] | None = None) -> PrunekitError | None:
    """Write ``output.save_checkpoint`` with what made it in the metadata (``cycles``: the run's cycle summaries).
    When it became impossible while the run trained (a foreign file appeared there, the folder became read-only),
    keep the weights in the run directory instead and return the error to raise once the run is finished."""
    dest = Path(recipe.output.save_checkpoint).expanduser()
    meta = _metadata(recipe, rundir, cycles or [])
    try:
        check_checkpoint_target(recipe)
    except PrunekitError as e:
        kept = rundir.file("checkpoint.safetensors")
        rundir.save_tensors(kept, model.state_dict(), meta)
        return PrunekitError(f"{e} (found when the run finished: the path was fine when it started); the weights "
                             f"were saved to {kept} instead")
    save_safetensors(dest, model.state_dict(), meta)
    reporter.log(f"saved checkpoint {dest}")
    return None
