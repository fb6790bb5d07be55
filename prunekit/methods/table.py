"""Trainable parameters of every method on one backbone, beside the paper's "# Params" columns (Tables 1-2)."""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch

from ..models.backbone import check_model_name
from ..models.params import count_parameters
from .base import build_method

# (label, method section, paper Table 1 (345 classes) M params, paper Table 2 (100 classes) M params)
PAPER_ROWS: list[tuple[str, dict, float | None, float | None]] = [
    ("Full fine-tuning", {"name": "full"}, 27.8, 27.8),
    ("Att-blocks", {"name": "attn_blocks"}, 8.93, 8.93),
    ("MLP-blocks", {"name": "mlp_blocks"}, 17.54, 17.54),
    ("Linear probe", {"name": "linear"}, 0.27, 0.27),
    ("PHM-Adapter (n=12)", {"name": "phm_adapter", "n": 12}, 0.47, 0.47),
    ("Compacter (n=12)", {"name": "compacter", "n": 12}, 0.41, 0.41),
    ("LoRA (Q, K), r=8", {"name": "lora", "rank": 8}, 0.42, 0.42),
    ("BitFit", {"name": "bitfit"}, 0.34, 0.34),
    ("VPT-deep (10 tokens)", {"name": "vpt", "tokens": 10, "deep": True}, 0.32, 0.33),
    ("VPT-deep (100 tokens)", {"name": "vpt", "tokens": 100, "deep": True}, 0.71, 0.52),
    ("AdaptFormer-64", {"name": "adaptformer", "hidden": 64}, 0.84, 0.66),
    ("AdaptFormer-256", {"name": "adaptformer", "hidden": 256}, 2.54, 2.98),
    ("Adapters (n_i = 47)", {"name": "adapters", "hidden": 47}, 1.37, 1.37),
    ("Adapters (n_i = 23)", {"name": "adapters", "hidden": 23}, 0.68, 0.68),
    ("Adapters (n_i = 1)", {"name": "adapters", "hidden": 1}, 0.30, 0.30),
    ("Adapters (sigma = 32)", {"name": "adapters", "sigma": 32}, 1.37, 1.37),
    ("Parallel adapters (sigma = 32)", {"name": "parallel_adapters", "sigma": 32}, None, None),
]


@dataclass
class ParamRow:
    label: str
    method: str
    trainable: int
    total: int
    paper_m: float | None

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def param_table(model_name: str, classes: int, methods: list[str] | None = None, img_size: int | None = None,
                paper_table: int | None = None) -> list[ParamRow]:
    """Build ``model_name`` with random weights once per row and count what each method trains."""
    check_model_name(model_name)
    rows = []
    for label, section, t1, t2 in PAPER_ROWS:
        if methods and section["name"] not in methods:
            continue
        kwargs = {"img_size": img_size} if img_size else {}
        torch.manual_seed(0)
        model = timm.create_model(model_name, pretrained=False, num_classes=classes, **kwargs)
        method, cfg = build_method(section)
        method.apply(model, cfg)
        paper = {1: t1, 2: t2}.get(paper_table) if paper_table else None
        rows.append(ParamRow(label, section["name"], count_parameters(model, True), count_parameters(model), paper))
    return rows
