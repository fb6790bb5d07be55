"""Real trained runs for the many-tasks tests (tests/test_task_runs.py, tests/test_serve.py): three tasks trained on
one backbone checkpoint (a tiny timm ViT, digits), of different widths and classes, one with emptied adapters; a
task trained on another checkpoint; a LoRA run. ``make_task_runs(tmp)`` trains them (about 20 s)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from test_cli import TINY_MODEL, tiny_recipe


def first_line(proc, timeout: float = 120) -> str:
    """The first line a process prints on stdout ("" if none within ``timeout`` seconds)."""
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


@dataclass
class TaskRuns:
    runs: dict[str, Path]  # full (strategy none, width 8), half (tina, classes 0-2), emptied (tina to sigma 64, 3-7)
    other: Path  # a run on another backbone checkpoint
    lora: Path  # a LoRA run on the first checkpoint
    backbone: Path
    images: Path  # digits as PNG files: images/<class>/<i>.png


def _backbone(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = timm.create_model(TINY_MODEL["name"], img_size=16, num_classes=10, **TINY_MODEL["kwargs"])
    save_file(net.state_dict(), str(path))
    return path


def _train(tmp: Path, name: str, backbone: Path, **sections) -> Path:
    from prunekit.cli import main

    data = {"name": "digits", "limit_train": 160, "limit_val": 48, **sections.pop("data", {})}
    recipe = tiny_recipe(tmp, name=name, model={"checkpoint": str(backbone), "allow_random_backbone": False},
                         data=data, train={"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "lr": 1e-2},
                         **sections)
    res = CliRunner().invoke(main, ["run", str(recipe)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp / "runs" / name


def make_task_runs(tmp: Path) -> TaskRuns:
    backbone = _backbone(tmp / "backbone.safetensors", 0)
    runs = {
        "full": _train(tmp, "full", backbone, strategy={"name": "none"}),
        "half": _train(tmp, "half", backbone, strategy={"name": "tina", "rho": 0.5, "sigma_target": 8},
                       data={"classes": [0, 1, 2]}),
        "emptied": _train(tmp, "emptied", backbone, strategy={"name": "tina", "rho": 0.75, "sigma_target": 64},
                          data={"classes": [3, 4, 5, 6, 7]}),
    }
    other = _train(tmp, "other", _backbone(tmp / "other.safetensors", 1), strategy={"name": "none"})
    lora = _train(tmp, "lora", backbone, method={"name": "lora", "rank": 2}, strategy={"name": "none"})
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = tmp / "images"
    for i in range(24):
        folder = images / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return TaskRuns(runs, other, lora, backbone, images)
