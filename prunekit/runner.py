"""The run's public entry points, kept under their old module name; the phases live in :mod:`prunekit.run`.

``from prunekit.runner import run_recipe, load_run, ...`` keeps working for scripts and docs written before the split.
"""
from .run import (
    NothingToResume,
    RunFinished,
    RunResult,
    build_model,
    check_recipe,
    dry_run,
    evaluate_run,
    example_inputs,
    load_run,
    num_classes_for,
    run_recipe,
)

__all__ = ["RunResult", "RunFinished", "NothingToResume", "check_recipe", "build_model", "run_recipe", "dry_run",
           "load_run", "evaluate_run", "num_classes_for", "example_inputs"]
