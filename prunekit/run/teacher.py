"""Train, the distillation teacher of a run (``train.distill``): built, written once, rebuilt on ``--resume``.

``teacher: unpruned`` is the engine's copy of the model just before the first prune. Its state (the parameters that
trained and every buffer, as :func:`~prunekit.train.resume.model_state` keeps them) goes to ``teacher.safetensors``
once, at that prune; a
resumed run past it rebuilds the recipe's model and loads that file, so the teacher is the same tensors as in the run
that was interrupted. ``teacher: <file>`` is a checkpoint of the same task: the recipe's backbone with its trained
head, read as ``model.checkpoint`` is (its head kept, not reset), loaded before the run directory is created.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.distill import Distill
from ..engine.iterative import Engine
from ..errors import PrunekitError
from ..models.backbone import create_backbone, head_names, load_backbone_weights, load_checkpoint_file
from ..recipe.spec import Recipe
from ..train.resume import TEACHER_FILE, load_model_state
from ..io.rundir import RunDir
from ..io.statedict import load_safetensors, with_versions
from .build import build_model
from .record import RunRecord

__all__ = ["recipe_distill", "save_teacher", "restore_teacher", "check_teacher_file"]

UNPRUNED = "unpruned"


def recipe_distill(recipe: Recipe, num_classes: int) -> Distill | None:
    """``train.distill`` as the engine's :class:`~prunekit.engine.distill.Distill` (None while ``teacher`` is
    null); a checkpoint teacher is built and loaded here."""
    d = recipe.train.distill
    if d.teacher is None:
        return None
    teacher = None if d.teacher == UNPRUNED else checkpoint_teacher(recipe, d.teacher, num_classes)
    return Distill(alpha=d.alpha, temperature=d.temperature, teacher=teacher)


def checkpoint_teacher(recipe: Recipe, path: str, num_classes: int) -> nn.Module:
    """The recipe's backbone (no method applied) with the weights and the trained head of checkpoint ``path``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PrunekitError(f"train.distill.teacher: {path!r} is neither 'unpruned' nor an existing checkpoint file")
    try:
        state = load_checkpoint_file(file)
    except PrunekitError as e:
        raise PrunekitError(f"train.distill.teacher: {str(e).split(': ', 1)[-1]}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        model = create_backbone(recipe.model, num_classes, pretrained=False)
    heads = tuple(n + "." for n in head_names(model))
    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(heads)]
    fits = [k for k in head_keys if k in state and tuple(state[k].shape) == tuple(own[k].shape)]
    if len(fits) != len(head_keys):
        raise PrunekitError(f"train.distill.teacher: {path} holds no classifier for this task's {num_classes} "
                            f"classes ({', '.join(head_keys[:2])}); the teacher must be a model trained on the task")
    try:
        load_backbone_weights(model, state, str(path), reset_head=False)
    except PrunekitError as e:
        raise PrunekitError(f"train.distill.teacher: {str(e).split(': ', 1)[-1]}") from None
    return model


def save_teacher(engine: Engine, recipe: Recipe, record: RunRecord) -> None:
    """The engine's ``on_prune``: at the first prune of a ``teacher: unpruned`` run, the teacher's state (written once,
    so ``--resume`` rebuilds it)."""
    if recipe.train.distill.teacher != UNPRUNED or engine.teacher is None or engine.plans:
        return
    teacher = engine.teacher
    trained = set(teacher.trained)
    state = {n: p.detach().cpu().clone() for n, p in teacher.model.named_parameters() if n in trained}
    state.update({n: b.detach().cpu().clone() for n, b in teacher.model.named_buffers()})
    record.dir.save_tensors(record.dir.file(TEACHER_FILE), with_versions(state, teacher.model))


def restore_teacher(engine: Engine, recipe: Recipe, record: RunRecord, num_classes: int, start_cycle: int,
                    device: torch.device) -> None:
    """A resumed run past its first prune gets its ``unpruned`` teacher back: the recipe's model with the state in
    ``teacher.safetensors``."""
    if recipe.train.distill.teacher != UNPRUNED or engine.first_prune is None or start_cycle <= engine.first_prune:
        return
    path = record.dir.file(TEACHER_FILE)
    model = build_model(recipe, num_classes)
    load_model_state(model, load_safetensors(path), path)
    engine.set_teacher(model.to(device))


def check_teacher_file(state: dict[str, Any], rundir: RunDir, resolved: dict[str, Any]) -> None:
    """Before ``--resume`` locks anything: a ``teacher: unpruned`` run that has pruned needs its teacher file."""
    distill = (resolved.get("train") or {}).get("distill") or {}
    pruned = any(r.get("plan") for r in ((state.get("engine") or {}).get("history") or []))
    path = rundir.file(TEACHER_FILE)
    if distill.get("teacher") == UNPRUNED and pruned and not path.is_file():
        raise PrunekitError(f"--resume: {path} is missing, and the run distils from the model before its first prune "
                            "(train.distill.teacher: unpruned), which it holds; nothing was changed. `prunekit run "
                            f"{rundir.path / 'recipe.resolved.yaml'} --out {rundir.path} --overwrite` starts it "
                            "again from the beginning")
