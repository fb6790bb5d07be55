"""Record, the whole model: ``output.save_checkpoint`` (how a pretraining recipe produces a backbone).

The target is checked before the run starts (:func:`check_checkpoint_target`) and again when it is written: prunekit
replaces only a file it wrote (its safetensors metadata carries prunekit's mark) unless ``output.replace_checkpoint``.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..errors import PrunekitError, RecipeError
from ..progress import ProgressReporter
from ..recipe import Recipe
from ..rundir import RunDir, RunWriteError, save_safetensors, written_by_prunekit

__all__ = ["check_checkpoint_target", "save_checkpoint"]


def check_checkpoint_target(recipe: Recipe) -> None:
    """``output.save_checkpoint`` may replace only a file prunekit wrote, unless ``output.replace_checkpoint``."""
    if not recipe.output.save_checkpoint:
        return
    dest = Path(recipe.output.save_checkpoint).expanduser()
    if dest.is_dir():
        raise RecipeError(f"output.save_checkpoint: {str(dest)!r} is a folder; expected a file path, e.g. "
                          f"{str(dest / 'model.safetensors')!r}")
    if dest.exists() and not recipe.output.replace_checkpoint and not written_by_prunekit(dest):
        raise RecipeError(f"output.save_checkpoint: {str(dest)!r} exists and prunekit did not write it (its "
                          "safetensors metadata carries no prunekit mark); nothing was changed. Choose another path, "
                          "or set output.replace_checkpoint: true to replace it")
    where = dest.parent.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise RunWriteError(f"output.save_checkpoint: cannot write {str(dest)!r}: {where} is not writable (read-only "
                            "file system or no permission); nothing was changed")


def save_checkpoint(recipe: Recipe, model: nn.Module, rundir: RunDir, reporter: ProgressReporter
                    ) -> PrunekitError | None:
    """Write ``output.save_checkpoint``. When it became impossible while the run trained (a foreign file appeared
    there, the folder became read-only), keep the weights in the run directory instead and return the error to raise
    once the run is finished."""
    dest = Path(recipe.output.save_checkpoint).expanduser()
    meta = {"recipe": recipe.name, "model": recipe.model.name, "run_id": rundir.run_id or ""}
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
