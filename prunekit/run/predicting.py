"""Predict: the classes a trained model gives image files, each file seen as the run's validation images were.

``prunekit predict RUN_DIR IMAGES...`` takes files and folders (a folder: every image file in it, at any depth, in
sorted order). Each file is read with PIL and goes through the run's evaluation transform
(:func:`~prunekit.run.task.image_transform`: grey or RGB as the data set, resized to ``model.img_size``, normalised
for the backbone), so a file holding one of the run's validation images gets the logits it got during training.
When every image lies in a folder named after one of the run's classes (the ``val/<class>/`` layout of an image
folder), the top-1 accuracy against those folder names is reported too; on the run's own validation images it is the
top-1 the run recorded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..data.folders import IMAGE_EXTENSIONS
from ..errors import PrunekitError
from .loading import load_trained_model
from .task import image_transform

__all__ = ["Prediction", "Predictions", "predict", "image_files", "read_image"]


@dataclass(frozen=True)
class Prediction:
    """The ``top_k`` classes of one image file, most probable first: ``(label, name, probability)``."""

    path: Path
    top: list[tuple[int, str, float]]


@dataclass
class Predictions:
    """What :func:`predict` found.

    Attributes:
        cycle: the training cycle whose model answered.
        rows: one :class:`Prediction` per image file, in the order the files were given.
        classes: the run's class names (None: labels are shown as indices, and ``note`` says why).
        note: why the class names are missing (empty when they are not).
        accuracy: top-1 against the images' folder names when every folder names a class, else None.
    """

    cycle: int | None
    rows: list[Prediction] = field(default_factory=list)
    classes: list[str] | None = None
    note: str = ""
    accuracy: float | None = None


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named: files as given, folders expanded to the image files inside (sorted, any depth)."""
    if not paths:
        raise PrunekitError("IMAGES: give at least one image file or folder")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise PrunekitError(f"{p}: no image files inside (image files end in {', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise PrunekitError(f"{p}: no such image file or folder")
    return files


def read_image(source, transform, label: str | None = None) -> torch.Tensor:
    """One image (a path or a binary file object) through ``transform``; a file PIL cannot read is a
    :class:`PrunekitError` naming ``label`` (default: the path)."""
    from PIL import Image

    try:
        with Image.open(source) as im:
            return transform(im)
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for a file it cannot read
        why = re.sub(r" <[\w.]+ object at 0x[0-9a-f]+>", "", str(e).splitlines()[0])[:120]  # a file object's repr
        raise PrunekitError(f"{label or source}: not a readable image ({type(e).__name__}: {why})") from None


@torch.no_grad()
def predict(source: str | Path, images: Sequence[str | Path], *, top_k: int = 5, cycle: int | None = None,
            backbone: str | Path | None = None, batch_size: int = 64, device: str | torch.device = "cpu"
            ) -> Predictions:
    """Classify image files with the model of a run directory (or of one trained file, see ``prunekit.load``).

    Args:
        source: a run directory, or one cycle's trained file.
        images: image files and folders of them.
        top_k: classes listed per image (at most the number of classes).
        cycle: the run's training cycle (default: its last).
        backbone: the backbone weights file, when it is not where the recipe says (see ``prunekit.load``).
        batch_size: images per forward pass.
        device: where the model runs.
    """
    if top_k < 1:
        raise PrunekitError(f"--top-k: expected an integer >= 1, got {top_k}")
    files = image_files(images)
    trained = load_trained_model(source, cycle, backbone=backbone, device=device)
    transform = image_transform(trained.recipe)
    names = trained.classes
    result = Predictions(trained.cycle, classes=names, note=trained.note)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = torch.stack([read_image(f, transform) for f in chunk]).to(device)
        probs = trained.model(x).float().softmax(-1).cpu()
        p, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        for f, ps, ks in zip(chunk, p.tolist(), idx.tolist()):
            result.rows.append(Prediction(f, [(k, names[k] if names else str(k), q) for k, q in zip(ks, ps)]))
    if names and all(f.parent.name in names for f in files):
        correct = sum(r.top[0][1] == r.path.parent.name for r in result.rows)
        result.accuracy = correct / len(files)
    return result
