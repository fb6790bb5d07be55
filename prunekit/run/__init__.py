"""The run phases: a recipe in, a run directory out. One module per phase, each with one job::

    check       check.py      every name resolved (did-you-mean), strategy parts replaced, recipe.resolved filled
    record      record.py     the run directory: may it be written? created, per-epoch / per-cycle files, DONE
                resuming.py   resume.pt saved after every epoch; --resume checks it and restores model and engine
                checkpoint.py output.save_checkpoint; report.py: report.md
    build       build.py      backbone + checkpoint weights + method, a function of the recipe alone
                pretrain.py   model.pretrain runs first when model.checkpoint does not exist yet
    data        task.py       the task's sets, normalised for the backbone, and their loaders
    train       loop.py       the cycles: the engine's prune loop, or plain cycles for strategy 'none'
                prune.py      the one seam with the pruning engine (build it, log prunes, plan a dry run, restore)

``pipeline.run_recipe`` strings them together; ``preview`` (``--dry-run``, ``inspect``), ``reload`` (``eval``),
``loading`` (``prunekit.load``), ``predicting`` (``predict``), ``exporting`` (``export``) and ``catalog`` (``list``)
reuse them; ``metrics`` writes ``metrics.csv`` and TensorBoard scalars for ``record``. Layers point down: the CLI
imports this package, this package imports the engine, strategies, methods, data and backbones, and nothing below
imports it.
"""
from .build import build_model, example_inputs, num_classes_for, preview_classes
from .catalog import REGISTRIES, catalog, param_rows
from .check import Checked, check_recipe
from .exporting import export_run
from .loading import Trained, load, load_trained_model
from .pipeline import end_processes, run_recipe
from .predicting import Prediction, Predictions, predict
from .pretrain import ensure_checkpoint
from .preview import Inspection, RunInspection, dry_run, inspect_recipe, inspect_run, step_seconds
from .record import RunFinished, RunResult
from .reload import evaluate_run, load_run
from .resuming import NothingToResume, recipe_to_resume
from .task import load_bundle

__all__ = [
    "run_recipe", "end_processes", "check_recipe", "Checked", "build_model", "example_inputs", "num_classes_for",
    "preview_classes", "ensure_checkpoint", "dry_run", "inspect_recipe", "Inspection", "load_run", "evaluate_run",
    "export_run", "RunResult", "RunFinished", "NothingToResume", "recipe_to_resume", "REGISTRIES", "catalog",
    "param_rows", "load", "load_trained_model", "Trained", "predict", "Prediction", "Predictions", "inspect_run",
    "RunInspection", "step_seconds", "load_bundle",
]
