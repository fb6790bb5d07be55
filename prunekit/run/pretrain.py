"""Build, the backbone's weights first: ``model.pretrain`` runs when ``model.checkpoint`` does not exist yet.

The pretraining recipe is an ordinary run (its own run directory, next to this one) whose ``output.save_checkpoint``
is this recipe's ``model.checkpoint``. Before it starts, this recipe's data and schedule are checked too (the
``--dry-run`` checks, on random weights), so a bad recipe fails in seconds, not after pretraining.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..core import distributed as dist_utils
from ..errors import PrunekitError, ConfigError
from .progress import ProgressReporter
from ..recipe.spec import Recipe, load_recipe
from ..io.runpaths import check_run_name
from .check import check_recipe
from .preview import dry_run
from .task import load_bundle

__all__ = ["ensure_checkpoint"]


def ensure_checkpoint(recipe: Recipe, out_parent: Path, reporter: ProgressReporter, run: Callable[..., object]) -> None:
    """Run ``model.pretrain`` with ``run`` (``run_recipe``) when ``model.checkpoint`` does not exist yet.

    Args:
        recipe: the recipe that needs the checkpoint.
        out_parent: where the pretraining run directory goes (a new name when taken: ``name-2`` ...).
        reporter: progress output.
        run: ``run(recipe, out=..., reporter=...)``, the pipeline itself.
    """
    ckpt = recipe.model.checkpoint
    if not ckpt or Path(ckpt).expanduser().exists():
        return
    if not recipe.model.pretrain:
        raise PrunekitError(f"model.checkpoint: no such file {ckpt!r} (set model.pretrain to a recipe that makes it)")
    pre, pre_path = _check_before_pretraining(recipe)
    name = pre.output.run_name or pre.name
    try:
        check_run_name(name, "output.run_name" if pre.output.run_name else "name")
    except PrunekitError as e:
        raise ConfigError(f"model.pretrain: {pre_path.name}: {e}") from None
    run_name, i = name, 1
    while (out_parent / run_name).exists():
        i += 1
        run_name = f"{name}-{i}"
    run_name = dist_utils.broadcast_object(run_name)  # under torchrun, rank 0's choice (it creates the folder)
    reporter.log(f"checkpoint {ckpt} not found: pretraining it with {pre_path.name} (run dir "
                 f"{out_parent / run_name})")
    pre.output.run_name = run_name
    run(pre, out=out_parent / run_name, reporter=reporter)
    if not Path(ckpt).expanduser().exists():
        raise PrunekitError(f"model.pretrain: {pre_path.name} finished without writing {ckpt}")


def _check_before_pretraining(recipe: Recipe) -> tuple[Recipe, Path]:
    """The pretraining recipe, checked, and its path; this recipe's data and schedule checked too."""
    ckpt = recipe.model.checkpoint
    base = Path(recipe.source).parent if recipe.source else Path.cwd()
    pre_path = (base / recipe.model.pretrain).resolve()
    if not pre_path.is_file():
        raise ConfigError(f"model.pretrain: no such recipe {str(pre_path)!r} (paths are relative to the recipe's "
                          f"folder {str(base)!r}); it runs because model.checkpoint {ckpt!r} does not exist")
    try:
        pre = load_recipe(pre_path, [f"output.save_checkpoint={ckpt}"])
        check_recipe(pre)
    except PrunekitError as e:
        raise ConfigError(f"model.pretrain: {pre_path.name}: {e}") from None
    load_bundle(recipe)
    dry_run(recipe)
    return pre, pre_path
