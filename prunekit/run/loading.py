"""Load: a trained model ready for inference, from a run directory or from one cycle's trained file.

::

    model = prunekit.load("runs/quickstart")                      # the last cycle: backbone + adapters + head
    model = prunekit.load("runs/quickstart", cycle=2)
    model = prunekit.load("cycle_3.safetensors", backbone="vit96-mnist5k.safetensors")   # the per-task file alone

A run directory is rebuilt as ``prunekit eval`` rebuilds it (:func:`~prunekit.run.reload.load_run`: its recipe, its
plans replayed, the cycle's trained file loaded). A trained file (``RUN_DIR/adapters/cycle_K.safetensors``) carries
its resolved recipe, its widths and the class names in its metadata, so it loads without its run directory: the
recipe's model is built on the backbone file (``backbone=``, or the recipe's ``model.checkpoint``), every adapter is
cut to the width the file records (emptied adapters removed, as pruning removed them) and the trained parameters
are loaded. ``backbone=`` may also be a recipe (a file or a built-in name) for a trained file that carries no recipe.
The model comes back in eval mode.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..adapters.groups import adapter_groups
from ..errors import PrunekitError
from ..core.plan import Plan
from ..recipe.spec import Recipe, load_recipe
from ..io.rundir import RunDir
from ..recipe.builtin import find_recipe
from .build import example_inputs
from .record import CLASSES_FILE
from .reload import build_for_reload, load_run, load_trained, read_trained_file, recipe_of_run, resolved_recipe, \
    run_cycles

__all__ = ["Trained", "TrainedFile", "load", "load_trained_model", "read_trained", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # what model.checkpoint reads (backbone.py)


@dataclass
class Trained:
    """A trained model and what names its outputs.

    Attributes:
        recipe: the recipe it was trained with.
        model: backbone + trained parameters (adapters or the pruned structure, head), in eval mode.
        cycle: the training cycle it is the end of (None: a trained file that does not record it).
        classes: ``classes[k]`` names output k; None when the run did not record names.
        note: why ``classes`` is None, for people (empty when it is not).
        record: the cycle's line of ``metrics.jsonl`` (empty for a trained file on its own).
    """

    recipe: Recipe
    model: nn.Module
    cycle: int | None
    classes: list[str] | None
    note: str = ""
    record: dict[str, Any] = field(default_factory=dict)


def load(source: str | Path, cycle: int | None = None, *, backbone: str | Path | None = None,
         device: str | torch.device = "cpu") -> nn.Module:
    """The model a run trained, ready for inference (eval mode, on ``device``).

    Args:
        source: a run directory, or one cycle's trained file (``RUN_DIR/adapters/cycle_K.safetensors``).
        cycle: the training cycle of a run directory (default: its last); a trained file is one cycle already.
        backbone: the backbone weights file when it is not where the recipe's ``model.checkpoint`` says (another
            machine); or, for a trained file that carries no recipe, the recipe to build from.
        device: where the model goes.

    Raises:
        PrunekitError: ``source`` is neither, its files are damaged, or the backbone file is missing.
    """
    return load_trained_model(source, cycle, backbone=backbone, device=device).model


def load_trained_model(source: str | Path, cycle: int | None = None, *, backbone: str | Path | None = None,
                       device: str | torch.device = "cpu") -> Trained:
    """:func:`load`, with the recipe, the cycle and the class names (what ``prunekit predict`` needs)."""
    path = Path(source).expanduser()
    if path.is_dir():
        trained = _from_run_dir(path, cycle, backbone)
    elif path.is_file():
        if cycle is not None:
            raise PrunekitError(f"cycle: {path} holds one cycle's trained parameters; give its run directory to "
                                "choose a cycle")
        trained = _from_file(path, backbone)
    else:
        raise PrunekitError(f"{source}: no such run directory or trained file")
    trained.model.to(device).eval()
    return trained


@dataclass
class TrainedFile:
    """One cycle's trained parameters as a file holds them, with what names them (no model built).

    Attributes:
        recipe: the recipe the run trained with.
        tensors: the file's tensors (adapters + head; a backbone run: every tensor of the pruned model).
        path: the trained file.
        cycle: its training cycle (None: a trained file that does not record it).
        classes: ``classes[k]`` names output k; None when the run did not record names (``note`` says why).
        note: why ``classes`` is None (empty when it is not).
    """

    recipe: Recipe
    tensors: dict[str, torch.Tensor]
    path: Path
    cycle: int | None
    classes: list[str] | None
    note: str = ""


def read_trained(source: str | Path, cycle: int | None = None) -> TrainedFile:
    """A run directory's (or one trained file's) trained parameters, recipe and class names, without building its
    model: what attaching a run to a backbone already in memory needs (:mod:`prunekit.tasks`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        rd = RunDir(path)
        recipe, done = recipe_of_run(rd), run_cycles(rd)
        cycle = done[-1]["cycle"] if cycle is None else cycle
        rec = next((m for m in done if m["cycle"] == cycle), None)
        if rec is None:
            raise PrunekitError(f"cycle: {cycle} not recorded in {path}; recorded: {[m['cycle'] for m in done]}")
        if not rec.get("adapter_file"):
            raise PrunekitError(f"{path}: cycle {cycle} saved no trained parameters (output.save_adapters: false)")
        file = path / rec["adapter_file"]
        classes, note = _run_classes(rd)
        return TrainedFile(recipe, read_trained_file(file, cycle), file, cycle, classes, note)
    if not path.is_file():
        raise PrunekitError(f"{source}: no such run directory or trained file")
    if cycle is not None:
        raise PrunekitError(f"cycle: {path} holds one cycle's trained parameters; give its run directory to choose "
                            "a cycle")
    tensors, meta = read_trained_file(path), _metadata(path)
    if "recipe_resolved" not in meta:
        raise PrunekitError(f"{path}: carries no recipe (written before prunekit stored it); give its run directory")
    recipe = resolved_recipe(_json(meta, "recipe_resolved", path), f"{path} (its recipe)")
    classes = _json(meta, "classes", path) if "classes" in meta else None
    cycle = int(meta["cycle"]) if str(meta.get("cycle", "")).isdigit() else None
    return TrainedFile(recipe, tensors, path, cycle, [str(c) for c in classes] if classes else None,
                       "" if classes else f"{path} records no class names")


def _from_run_dir(path: Path, cycle: int | None, backbone: str | Path | None) -> Trained:
    if backbone is not None and _is_recipe(backbone):
        raise PrunekitError(f"backbone: {backbone} is a recipe, but the run directory {path} brings its own; "
                            "backbone= takes the backbone's weights file here")
    recipe, model, rec = load_run(path, cycle, checkpoint=backbone)
    classes, note = _run_classes(RunDir(path))
    return Trained(recipe, model, rec["cycle"], classes, note, rec)


def _run_classes(rd: RunDir) -> tuple[list[str] | None, str]:
    path = rd.file(CLASSES_FILE)
    if not path.is_file():
        return None, f"{rd.path} has no {CLASSES_FILE} (a run from before prunekit recorded class names)"
    try:
        classes = json.loads(path.read_text()).get("classes")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise PrunekitError(f"{path}: not a readable class list ({type(e).__name__}); truncated or edited?") from None
    if classes is None:
        return None, f"the data set of {rd.path} does not name its classes"
    if not isinstance(classes, list):
        raise PrunekitError(f"{path}: 'classes' should be a list of names, got {classes!r:.60}")
    return [str(c) for c in classes], ""


def _is_recipe(backbone: str | Path) -> bool:
    return Path(backbone).suffix not in WEIGHT_SUFFIXES


def _from_file(path: Path, backbone: str | Path | None) -> Trained:
    trained = read_trained_file(path)
    meta = _metadata(path)
    if backbone is not None and _is_recipe(backbone):
        recipe, checkpoint = load_recipe(find_recipe(str(backbone))), None
        recipe.model.allow_random_backbone = True  # as for a run directory: it has trained already
    elif "recipe_resolved" in meta:
        recipe, checkpoint = resolved_recipe(_json(meta, "recipe_resolved", path), f"{path} (its recipe)"), backbone
    else:
        raise PrunekitError(f"{path}: carries no recipe (written before prunekit stored it); load its run directory, "
                            "or pass the recipe it was trained with: backbone=RECIPE")
    if recipe.strategy.groups == "backbone":
        raise PrunekitError(f"{path}: the weights of a backbone-pruned cycle; its structure comes from the run's "
                            "plan.json: load the run directory (prunekit.load(RUN_DIR, cycle=K))")
    model = build_for_reload(recipe, trained, checkpoint, str(path))
    widths = _json(meta, "widths", path) if "widths" in meta else {}
    _cut_to_widths(model, recipe, widths, path)
    load_trained(model, trained, str(path))
    classes = _json(meta, "classes", path) if "classes" in meta else None
    note = "" if classes else f"{path} records no class names"
    cycle = int(meta["cycle"]) if str(meta.get("cycle", "")).isdigit() else None
    return Trained(recipe, model, cycle, [str(c) for c in classes] if classes else None, note)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _json(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError:
        raise PrunekitError(f"{path}: its metadata '{key}' is not JSON; edited?") from None


def _cut_to_widths(model: nn.Module, recipe: Recipe, widths: dict[str, int], path: Path) -> None:
    """Every adapter cut to the width the trained file records; which neurons stay does not matter, since every
    adapter parameter is then loaded from the file (an adapter at 0 is removed, as pruning removed it)."""
    if not widths:
        return
    groups = {g.name: g for g in adapter_groups(model, example_inputs(recipe))}
    if set(groups) != set(widths) or any(not 0 <= w <= groups[k].width for k, w in widths.items()):
        raise PrunekitError(f"{path}: its widths {dict(list(widths.items())[:3])} ... do not fit the adapters of its "
                            f"recipe's model ({dict(list((k, g.width) for k, g in groups.items())[:3])} ...)")
    plan = Plan({k: g.width for k, g in groups.items()}, {k: list(range(widths[k], g.width))
                                                           for k, g in groups.items() if widths[k] < g.width})
    plan.apply(model, groups)
