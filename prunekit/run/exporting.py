"""Export: a run directory's model at a cycle, as one TorchScript, ONNX or ``torch.export`` file that needs neither
prunekit nor timm.

The model is rebuilt exactly as ``prunekit eval`` rebuilds it (:func:`~prunekit.run.reload.load_run`), put in eval
mode, traced on the recipe's example input and checked against PyTorch on a batch of another size
(:func:`~prunekit.io.export.export_model`). The default file is ``RUN_DIR/export/cycle_K.{pt,onnx,pt2}``, a file
prunekit adds to the run directory's manifest; any existing file there or at ``--out`` is refused unless
``--overwrite``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.export import SUFFIXES, ExportError, export_model
from ..io.rundir import RunDir
from .build import example_inputs
from .reload import load_run

__all__ = ["export_run", "SUFFIXES"]


def export_run(run_dir: str | Path, *, format: str = "torchscript", cycle: int | None = None,
               out: str | Path | None = None, overwrite: bool = False, atol: float = 1e-4) -> dict[str, Any]:
    """Write the model of ``run_dir`` at ``cycle`` (default: the last) to ``out`` and check it; returns the report of
    :func:`~prunekit.io.export.export_model` plus ``cycle``."""
    if format not in SUFFIXES:  # before anything is loaded, locked or added to the manifest
        raise ExportError(f"--format: unknown {format!r}; allowed: {', '.join(SUFFIXES)}")
    recipe, model, rec = load_run(run_dir, cycle)
    example = example_inputs(recipe)
    model = model.cpu()
    if out is not None:
        info = export_model(model, example, Path(out).expanduser(), format=format, atol=atol, replace=overwrite)
        return {"cycle": rec["cycle"], **info}
    rd = RunDir(run_dir).open_for_resume("export: ")  # locked: a live run in the same folder is refused by name
    try:
        with rd.writing(f"export/cycle_{rec['cycle']}{SUFFIXES[format]}") as path:
            info = export_model(model, example, path, format=format, atol=atol, replace=overwrite)
    finally:
        rd.close()
    return {"cycle": rec["cycle"], **info}
