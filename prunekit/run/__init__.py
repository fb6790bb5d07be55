"""The run phases: a recipe in, a run directory out. One module per phase, each with one job::

    check       check.py      every name resolved (did-you-mean), strategy parts replaced, recipe.resolved filled
    record      record.py     the run directory: may it be written? created, per-epoch / per-cycle files, DONE
                resuming.py   resume.pt saved after every epoch; --resume checks it and restores model and engine
                checkpoint.py output.save_checkpoint (what made it in its metadata); report.py: report.md
    build       build.py      backbone + checkpoint weights + method, a function of the recipe alone
                pretrain.py   model.pretrain runs first when model.checkpoint does not exist yet
                backbone_result.py  the checkpoint's own top-1 on its pretraining task (ablate's backbone row)
    data        task.py       the task's sets, normalised for the backbone, and their loaders
    train       loop.py       the cycles: the engine's prune loop, or plain cycles for strategy 'none'
                prune.py      the one seam with the pruning engine (build it, log prunes, plan a dry run, restore)
                teacher.py    train.distill's teacher: a checkpoint built, or the unpruned model written once, rebuilt
                estimate.py   the run's duration: two timed steps (dry run), its own first steps (run)

``pipeline.run_recipe`` strings them together; ``preview`` (``--dry-run``, ``inspect``), ``reload`` (``eval``),
``loading`` (``prunekit.load``), ``predicting`` (``predict``), ``exporting`` (``export``) and ``catalog`` (``list``)
reuse them; ``metrics`` writes ``metrics.csv`` and TensorBoard scalars for ``record``. Layers point down: the CLI
imports this package, this package imports the engine, strategies, methods, data and backbones, and nothing below
imports it.
"""
# Every name is imported on first use (PEP 562), as in prunekit/__init__.py: `prunekit list strategies` reads one
# registry without importing torch, timm and every phase; `from prunekit.run import run_recipe` imports its phases.
from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "backbone_result": ("backbone_result",),
    "build": ("build_model", "example_inputs", "num_classes_for"),
    "catalog": ("REGISTRIES", "param_rows"),  # `catalog(kind)`: from prunekit.run.catalog (the module's name)
    "check": ("Checked", "check_recipe"),
    "checkpoint": ("checkpoint_result",),
    "exporting": ("export_run",),
    "loading": ("Trained", "load", "load_trained_model"),
    "pipeline": ("end_processes", "run_recipe"),
    "predicting": ("Prediction", "Predictions", "predict"),
    "pretrain": ("ensure_checkpoint",),
    "preview": ("Inspection", "RunInspection", "dry_run", "inspect_recipe", "inspect_run", "step_seconds"),
    "record": ("RunFinished", "RunResult"),
    "reload": ("evaluate_run", "load_run"),
    "resuming": ("NothingToResume", "recipe_to_resume"),
    "task": ("load_bundle",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
