"""Predict under several tasks at once: one backbone, every task's images in mixed batches, one table.

``prunekit predict --task pets=runs/pets --task cars=runs/cars pets=photos/pets cars=photos/cars`` reads each
task's files as that run's validation images were read (its data set's transform), batches images of all tasks
together (one backbone pass per batch, :class:`~prunekit.tasks.model.MultiTaskModel`) and gives one row per (task,
image). An image path without ``NAME=`` is classified under every task. Where every image of a task lies in a folder
named after one of its classes, that task's top-1 against the folder names is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import PrunekitError, did_you_mean
from ..io.files import atomic_write_text
from ..run.predicting import image_files, read_image
from .model import MultiTaskModel, load_tasks

__all__ = ["TaskPrediction", "TaskPredictions", "predict_tasks", "parse_named", "write_table"]


@dataclass(frozen=True)
class TaskPrediction:
    """One image under one task: its ``top`` classes ``(label, name, probability)``, most probable first."""

    task: str
    path: Path
    top: list[tuple[int, str, float]]


@dataclass
class TaskPredictions:
    """Every (task, image) row, in the order given; per task its cycle and, when folders name classes, its top-1."""

    rows: list[TaskPrediction] = field(default_factory=list)
    cycles: dict[str, int | None] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)


def parse_named(items: Sequence[str], what: str, names: Sequence[str] | None = None) -> list[tuple[str | None, str]]:
    """``NAME=VALUE`` items as ``(NAME, VALUE)``; a bare value is ``(None, VALUE)`` when ``names`` is given (it goes to
    every task), else an error. A NAME not in ``names`` is an error with close matches."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value:
            if names is None:
                raise PrunekitError(f"{what}: expected NAME=PATH, got {item!r}")
            out.append((None, item))
            continue
        if names is not None and name not in names:
            if Path(item).exists():  # a path that holds '=' itself
                out.append((None, item))
                continue
            raise PrunekitError(f"{what}: {item!r} names task {name!r}, which is not one of --task's "
                                f"({', '.join(names)});{did_you_mean(name, list(names))}")
        out.append((name, value))
    return out


@torch.no_grad()
def predict_tasks(tasks: Mapping[str, str | Path] | MultiTaskModel, images: Sequence[tuple[str | None, str | Path]],
                  *, top_k: int = 5, backbone: str | Path | None = None, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> TaskPredictions:
    """Classify images under their tasks.

    Args:
        tasks: ``{name: run directory or trained file}``, or a model from :func:`~prunekit.load_tasks`.
        images: ``(task, file or folder)``; task None: under every task.
        top_k: classes per row (at most the task's classes).
        backbone: the backbone weights file, when it is not where the runs' ``model.checkpoint`` says.
        batch_size: images per backbone pass (mixed tasks).
        device: where the model runs.
    """
    if top_k < 1:
        raise PrunekitError(f"--top-k: expected an integer >= 1, got {top_k}")
    model = tasks if isinstance(tasks, MultiTaskModel) else load_tasks(dict(tasks), backbone=backbone,
                                                                      device=device)
    work: list[tuple[str, Path]] = []
    for name, path in images:
        files = image_files([path])
        for task in ([name] if name is not None else model.tasks):
            model.task(task)  # an unknown name is refused before anything is read
            work += [(task, f) for f in files]
    if not work:
        raise PrunekitError("IMAGES: give at least one image file or folder")
    transforms = {t: model.runs[t].transform() for t in {t for t, _ in work}}
    result = TaskPredictions(cycles={t: r.cycle for t, r in model.runs.items()})
    for start in range(0, len(work), batch_size):
        chunk = work[start:start + batch_size]
        x = torch.stack([read_image(f, transforms[t]) for t, f in chunk]).to(device)
        out = model(x, tasks=[t for t, _ in chunk])
        for (t, f), top in zip(chunk, out.top_k(top_k)):
            result.rows.append(TaskPrediction(t, f, top))
    for t in transforms:
        names = model.runs[t].classes
        rows = [r for r in result.rows if r.task == t]
        if names and all(r.path.parent.name in names for r in rows):
            result.accuracy[t] = sum(r.top[0][1] == r.path.parent.name for r in rows) / len(rows)
    return result


def write_table(rows: Sequence[TaskPrediction], path: str | Path, *, overwrite: bool = False) -> Path:
    """One CSV row per (task, image): ``task, image, top1, p1, top2, p2, ...`` (the most rows' ``k``). An existing
    file is replaced only with ``overwrite``; the file is written whole or not at all."""
    import csv
    import io

    path = Path(path)
    if path.is_dir():
        raise PrunekitError(f"--out: {path} is a folder; name a .csv file")
    if path.exists() and not overwrite:
        raise PrunekitError(f"--out: {path} exists; pass --overwrite to replace it")
    k = max((len(r.top) for r in rows), default=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "image"] + [c for i in range(1, k + 1) for c in (f"top{i}", f"p{i}")])
    for r in rows:
        w.writerow([r.task, str(r.path)] + [v for _, name, p in r.top for v in (name, f"{p:.6f}")])
    atomic_write_text(path, buf.getvalue())
    return path
