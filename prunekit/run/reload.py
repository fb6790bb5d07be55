"""Reload: a run directory rebuilt into the model it trained, at any finished cycle, and its top-1 measured again.

``prunekit eval`` goes through the same phases as the run: the recipe of ``recipe.resolved.yaml`` checked and built,
the model resized to the plans of ``plan.json`` (from what each recorded it changed, without tracing; plans written
before they recorded it are replayed), the cycle's trained parameters (a backbone run: the whole pruned model) loaded,
the validation set loaded as the run loaded it. A damaged run directory (a truncated or edited file, a missing adapter
file) is a named error.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import parse_section
from ..errors import PrunekitError, ConfigError
from ..core.plan import Plan
from ..engine.sources import replay
from ..recipe.spec import Recipe, read_yaml
from ..core.structure import replayable
from ..io.files import read_lines
from ..io.pruned import resize_to_plans
from ..io.rundir import RunDir
from ..io.statedict import load_into, load_safetensors
from ..train.trainer import Trainer, seed_everything, select_device
from .build import build_model, example_inputs, num_classes_for
from .task import load_task

__all__ = ["load_run", "evaluate_run", "validation_top1", "run_cycles", "recipe_of_run", "read_trained_file",
           "load_trained", "build_for_reload"]


def load_run(run_dir: str | Path, cycle: int | None = None, checkpoint: str | Path | None = None
             ) -> tuple[Recipe, nn.Module, dict[str, Any]]:
    """Rebuild the model of a run directory as it was at the end of training cycle ``cycle`` (default: last).

    ``checkpoint`` replaces the recipe's ``model.checkpoint`` (the backbone file is elsewhere on this machine). A
    damaged run directory (a truncated or edited ``recipe.resolved.yaml``, ``metrics.jsonl`` or ``plan.json``, a
    missing or corrupt adapter file) raises :class:`PrunekitError` naming the file and what is wrong with it.
    """
    rd = RunDir(run_dir)
    recipe = recipe_of_run(rd)
    done = run_cycles(rd)
    cycle = done[-1]["cycle"] if cycle is None else cycle
    rec = next((m for m in done if m["cycle"] == cycle), None)
    if rec is None:
        raise PrunekitError(f"--cycle: {cycle} not recorded in {run_dir}; recorded: {[m['cycle'] for m in done]}")
    if not rec.get("adapter_file"):
        raise PrunekitError(f"{run_dir}: cycle {cycle} saved no trained parameters (output.save_adapters: false)")
    trained = read_trained_file(rd.path / rec["adapter_file"], cycle)
    # The recipe's model, the plans made before this cycle replayed, the cycle's file loaded: the trained parameters
    # (adapter runs), or every tensor of the pruned model (a run that prunes the backbone; model/cycle_K.safetensors).
    model = build_for_reload(recipe, trained, checkpoint, str(run_dir))
    plans = _plans_before(rd.file("plan.json"), cycle)
    try:
        resized = False
        if replayable(p.meta.get("structure") for p in plans):  # no tracing: resized, then loaded from the file
            resized = resize_to_plans(model, plans, run_dir) <= set(trained)
            if not resized:  # a resized tensor the cycle's file does not hold (a frozen one): slice it instead
                model = build_for_reload(recipe, trained, checkpoint, str(run_dir))
        if not resized:  # or plans from before they recorded their changes
            replay(model, plans, example_inputs(recipe))
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise PrunekitError(f"{run_dir}: plan.json and {rec['adapter_file']} do not fit the model of "
                            f"recipe.resolved.yaml ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    load_trained(model, trained, rec["adapter_file"], whole=recipe.strategy.groups == "backbone")
    return recipe, model, rec


def run_cycles(rd: RunDir) -> list[dict[str, Any]]:
    """The cycle records of a run directory's ``metrics.jsonl``; an error when no cycle has finished."""
    done = [m for m in _run_metrics(rd) if m.get("type") == "cycle"]
    if not done:
        raise PrunekitError(f"{rd.path}: no finished cycle recorded in metrics.jsonl")
    return done


def build_for_reload(recipe: Recipe, trained: dict[str, torch.Tensor], checkpoint: str | Path | None,
                     source: str) -> nn.Module:
    """The recipe's model (backbone weights + method), its head sized as the trained file's; ``checkpoint``
    replaces ``model.checkpoint``. A backbone file that is not where the recipe says is named, with the way out."""
    if checkpoint is not None:
        recipe.model.checkpoint, recipe.model.pretrain, recipe.model.pretrained = str(checkpoint), None, False
    elif recipe.model.checkpoint and not Path(recipe.model.checkpoint).expanduser().is_file():
        raise PrunekitError(f"{source}: its backbone checkpoint {recipe.model.checkpoint} (model.checkpoint) does "
                            "not exist on this machine; pass the backbone file: prunekit.load(..., backbone=FILE), "
                            "or --backbone FILE")
    return build_model(recipe, _classes_from_tensors(trained, recipe))


def load_trained(model: nn.Module, trained: dict[str, torch.Tensor], name: str, whole: bool = False) -> None:
    """Load a cycle's trained parameters into the rebuilt model: every trained parameter (``whole``: every tensor of
    the model, the file of a run that prunes the backbone), and nothing else."""
    try:
        result = load_into(model, trained, strict=False)
    except RuntimeError as e:  # a shape differs
        raise PrunekitError(f"{name} does not fit the rebuilt model ({str(e).splitlines()[-1].strip()[:200]})"
                            ) from None
    if result.unexpected_keys:
        raise PrunekitError(f"{name} does not fit the rebuilt model: unexpected {result.unexpected_keys[:3]}")
    if whole:  # the file is the whole pruned model: every tensor must be in it
        missing_trained = [n for n in model.state_dict() if n not in trained]
    else:
        missing_trained = [n for n, p in model.named_parameters() if p.requires_grad and n not in trained]
    if missing_trained:
        raise PrunekitError(f"{name} lacks trained parameters {missing_trained[:3]}")


def _plans_before(plan_path: Path, cycle: int) -> list[Plan]:
    """The plans applied before training cycle ``cycle``: those made after an earlier cycle (``meta['cycle']``).

    An iterative run prunes after every cycle but the last; a one-shot run prunes once, after cycle 0, and trains
    its other cycles at that width.
    """
    try:
        plans = Plan.load_all(plan_path)
    except FileNotFoundError:
        raise PrunekitError(f"{plan_path}: missing; the run directory is incomplete (plan.json records the prunes "
                            "that cycles after the first need)") from None
    except (OSError, ValueError, PrunekitError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PrunekitError(f"{plan_path}: not a readable plan file ({type(e).__name__}: {str(e)[:200]}); "
                            "truncated or edited?") from None
    after = [p.meta.get("cycle") for p in plans]
    if not all(isinstance(c, int) for c in after) or after != sorted(set(after)):
        raise PrunekitError(f"{plan_path}: every plan records the cycle after which it was applied (meta.cycle), in "
                            f"increasing order; got {after[:10]}: edited, or from another run?")
    return [p for p, c in zip(plans, after) if c < cycle]


def recipe_of_run(rd: RunDir) -> Recipe:
    """The recipe a run directory was trained with, validated as any recipe is."""
    path = rd.resolved_recipe()
    return resolved_recipe(read_yaml(path, "resolved recipe"), str(path))


def resolved_recipe(data: Any, where: str) -> Recipe:
    """A resolved recipe (``recipe.resolved.yaml``, or the copy a trained file carries) as a :class:`Recipe`."""
    if not isinstance(data, dict):
        raise PrunekitError(f"{where}: expected a mapping of sections, got {'nothing' if data is None else data!r:.60}"
                            "; truncated or edited?")
    try:
        recipe = parse_section(Recipe, data)
    except ConfigError as e:
        raise PrunekitError(f"{where}: {e}") from None
    # The run has trained already: refusing a random frozen backbone is for starting runs, not for reloading one.
    recipe.model.allow_random_backbone = True
    return recipe


_CYCLE_KEYS = ("cycle", "last_top1")  # what reloading and evaluating a cycle read from its metrics record


def _run_metrics(rd: RunDir) -> list[dict[str, Any]]:
    """``metrics.jsonl``, every line checked: a truncated or edited line is named (file, line) instead of crashing."""
    path = rd.file("metrics.jsonl")
    if not path.is_file():
        return []
    lines = read_lines(path)
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            last = " (the last line: a write cut short by a crash?)" if i == len(lines) else ""
            raise PrunekitError(f"{path}: line {i} is not a JSON record{last}: {e.msg} at column {e.colno}: "
                                f"{line[:80]!r}") from None
        if not isinstance(record, dict):
            raise PrunekitError(f"{path}: line {i} is not a JSON object: {line[:80]!r}")
        if record.get("type") == "cycle":
            lacking = [k for k in _CYCLE_KEYS if k not in record]
            if lacking or not isinstance(record["cycle"], int) or not isinstance(record["last_top1"], (int, float)):
                raise PrunekitError(f"{path}: line {i}: a cycle record needs an integer 'cycle' and a number "
                                    f"'last_top1', got {line[:120]!r}")
        records.append(record)
    return records


def read_trained_file(path: Path, cycle: int | None = None) -> dict[str, torch.Tensor]:
    """The trained parameters of a cycle; a missing or unreadable file is a named error."""
    if not path.is_file():
        if cycle is None:
            raise PrunekitError(f"{path}: no such file")
        raise PrunekitError(f"{path}: missing; metrics.jsonl records it as cycle {cycle}'s trained parameters "
                            "(deleted or moved?)")
    try:
        return load_safetensors(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError) on bad bytes
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise PrunekitError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {detail}); corrupt "
                            "or truncated") from None


def _classes_from_tensors(trained: dict[str, torch.Tensor], recipe: Recipe) -> int:
    for key, value in trained.items():
        if key.split(".")[0] in ("head", "fc", "classifier") and key.endswith("bias"):
            return value.shape[0]
    return num_classes_for(recipe)


def validation_top1(recipe: Recipe, model: nn.Module) -> tuple[float, int]:
    """Top-1 of ``model`` on the recipe's validation set, loaded and evaluated as its run did; and the set's size."""
    t = recipe.train
    seed_everything(t.seed, t.deterministic)
    device = select_device(t.device)
    task = load_task(recipe, device, num_workers=0)
    return Trainer(t, None, task.val, device).evaluate(model)["top1"], len(task.bundle.val)


def evaluate_run(run_dir: str | Path, cycle: int | None = None) -> dict[str, Any]:
    """Reload backbone + trained parameters of a cycle and measure top-1 on the validation set."""
    recipe, model, rec = load_run(run_dir, cycle)
    top1, _ = validation_top1(recipe, model)
    epochs = [m for m in _run_metrics(RunDir(run_dir)) if m.get("type") == "epoch" and m.get("cycle") == rec["cycle"]]
    return {"cycle": rec["cycle"], "top1": top1, "recorded_last_top1": rec["last_top1"],
            "recorded_epochs": len(epochs), "match": math.isclose(top1, rec["last_top1"], abs_tol=1e-9)}
