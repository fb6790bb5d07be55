"""Record, resuming: ``prunekit run --resume RUN_DIR`` continues where an interrupted run stopped.

After every epoch the run saves ``resume.pt`` (:func:`state_saver`; the format is in prunekit/train/resume.py). Resuming
first checks, reading only, that the state belongs to the run directory (:func:`open_for_resume`), then rebuilds the
model from the recipe, brings model, engine and trainer to the saved state (:func:`restore`) and continues.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..core import distributed as dist_utils
from ..errors import PrunekitError
from ..recipe.spec import Recipe, load_recipe, recipe_to_dict
from ..train.resume import (STATE_FILE, check_provenance, load_model_state, load_state, model_state, recipe_digest,
                            save_state)
from ..io.rundir import RunDir
from ..io.runlock import RunLockedError, holder_of
from .loop import CycleLoop
from .prune import restore_engine
from .record import RunFinished, RunRecord, on_main_rank
from .teacher import check_teacher_file, restore_teacher

_NO_DEFAULT = object()

__all__ = ["NothingToResume", "open_for_resume", "state_saver", "restore", "recipe_to_resume", "with_later_defaults"]


class NothingToResume(PrunekitError):
    """``--resume`` of an unfinished run without ``resume.pt``: everything is kept, and the message says how far the
    run got."""

    def __init__(self, rundir: RunDir):
        path = rundir.path
        super().__init__(f"--resume: {path} has no {STATE_FILE} (output.save_state was false, or the file was "
                         f"removed), so it cannot continue; nothing was changed. It got this far: {rundir.progress()}. "
                         f"`prunekit eval {path} --cycle K` checks a finished cycle; `prunekit run "
                         f"{path / 'recipe.resolved.yaml'} --out {path} --overwrite` starts it again from the "
                         "beginning")
        self.path = path


def recipe_to_resume(run_dir: str | Path) -> Recipe:
    """The recipe an unfinished run started with (``recipe.resolved.yaml``), after checking the folder is a run."""
    rundir = RunDir(run_dir)
    rundir.require_run("--resume: ")  # before reading anything in a folder prunekit did not make
    return load_recipe(rundir.resolved_recipe("--resume: "))


def open_for_resume(record: RunRecord) -> dict[str, Any]:
    """The saved state of the unfinished run in ``record``, checked against its recipe and its files.

    Rank 0 checks (reading only, so a refusal changes nothing, not even the lock file), then locks the run directory
    and makes sure nothing changed in between.
    """
    rundir = record.dir
    state_path = rundir.file(STATE_FILE)
    metrics = rundir.file("metrics.jsonl")

    def stamp() -> list[tuple[int, int] | None]:
        return [(p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                for p in (state_path, metrics, rundir.file(RunDir.DONE))]

    def open_and_check() -> dict[str, Any]:
        rundir.require_run("--resume: ")
        if rundir.finished:
            raise RunFinished(rundir.path)
        holder = holder_of(rundir.path)
        if holder is not None:
            raise RunLockedError(rundir.path, holder)
        if not state_path.exists():
            raise NothingToResume(rundir)
        before = stamp()
        state = with_later_defaults(load_state(state_path), record.resolved)
        check_provenance(state, state_path, record.resolved, rundir.run_id,
                         metrics.stat().st_size if metrics.is_file() else None, rundir.metrics_digest)
        check_teacher_file(state, rundir, record.resolved)
        rundir.open_for_resume()
        if stamp() != before:
            raise PrunekitError(f"--resume: {rundir.path} changed while it was being checked (another process wrote "
                                "it); nothing was changed. Try again")
        return state

    state = on_main_rank(open_and_check, rundir.path)
    return state if dist_utils.is_main() else load_state(state_path)


def with_later_defaults(state: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """``state`` as if saved by this prunekit: recipe keys added since it was saved (absent from its recipe) join it
    with the value the run directory's recipe has, when that is the key's default (a run that started before
    ``strategy.groups`` existed resumes; a recipe edited to a non-default value is still refused). A state whose
    recipe does not match its own digest is returned as it is, for :func:`check_provenance` to refuse."""
    saved = state.get("recipe")
    if not isinstance(saved, dict) or state.get("recipe_digest") != recipe_digest(saved):
        return state
    filled = _fill(saved, resolved, recipe_to_dict(Recipe()))
    return {**state, "recipe": filled, "recipe_digest": recipe_digest(filled)}


def _fill(saved: dict[str, Any], current: dict[str, Any], defaults: Any) -> dict[str, Any]:
    out = dict(saved)
    for key, value in current.items():
        default = defaults.get(key, _NO_DEFAULT) if isinstance(defaults, dict) else _NO_DEFAULT
        if key not in saved:
            if default is not _NO_DEFAULT and value == default:
                out[key] = value
        elif isinstance(saved[key], dict) and isinstance(value, dict) and isinstance(default, dict):
            out[key] = _fill(saved[key], value, default)
    return out


def state_saver(record: RunRecord, model: nn.Module, loop: CycleLoop) -> Callable[[dict[str, Any]], None]:
    """The trainer's ``on_checkpoint``: ``resume.pt`` after every epoch (every rank's RNG, rank 0 writes)."""
    rundir = record.dir

    def save(tstate: dict[str, Any]) -> None:
        rng = dist_utils.all_gather_object(tstate.pop("rng"))  # every rank's RNG, so each continues its own stream
        if not rundir.write:
            return
        metrics_bytes = rundir.file("metrics.jsonl").stat().st_size
        with rundir.writing(STATE_FILE) as path:
            save_state(path, {
                "trainer": tstate, "rng": rng, "model": model_state(model),
                "engine": None if loop.engine is None else loop.engine.state_dict(), "cycles": record.cycles,
                "metrics_bytes": metrics_bytes, "metrics_sha256": rundir.metrics_digest(metrics_bytes),
                "world_size": dist_utils.world_size(), "recipe": record.resolved,
                "recipe_digest": recipe_digest(record.resolved), "run_id": rundir.run_id})

    return save


def restore(state: dict[str, Any], recipe: Recipe, model: nn.Module, loop: CycleLoop, record: RunRecord,
            num_classes: int) -> int:
    """Bring a freshly built model, engine (with its distillation teacher) and trainer to the saved state; returns the
    cycle to continue."""
    trainer = loop.trainer
    if loop.engine is not None:
        restore_engine(loop.engine, state["engine"], model, recipe, trainer.device)
        restore_teacher(loop.engine, recipe, record, num_classes, state["trainer"]["cycle"], trainer.device)
    load_model_state(model, state["model"], record.dir.file(STATE_FILE))
    model.to(trainer.device)
    rngs = state["rng"]
    r = dist_utils.rank()
    trainer.resume_from = {**state["trainer"], "rng": rngs[r] if r < len(rngs) else rngs[0]}
    record.cycles.extend(state["cycles"])
    record.dir.truncate_metrics(state["metrics_bytes"])  # drop what was logged after the saved state
    return state["trainer"]["cycle"]
