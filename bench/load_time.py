"""Loading a pruned model: ``load_pruned`` (resize from the saved record, no tracing) vs a plain ``load_state_dict``.

For each model: prune 30 % of its parameters with ``pk.prune`` (timed: what the person who prunes pays), save it with
``pk.save_pruned``, then time side by side, each on models built beforehand (building the architecture is the same
for every way and left out):

- ``state_dict``: ``safetensors.torch.load_file`` + ``load_state_dict(strict=True)`` into a model that already has the
  pruned shapes (what loading costs natively: ``timm.create_model(**kwargs)`` or ``from_pretrained``);
- ``load_pruned``: ``pk.load_pruned(dir, fresh_unpruned_model)`` (reads the record, resizes, loads);
- ``replay``: the same directory without the recorded changes (how files of earlier versions load: trace, find the
  groups, replay the plans).

Goal: ``load_pruned`` within 2x of ``state_dict``.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import timm
import torch

from common import device, median, parser, write
import prunekit as pk


def _strip_records(directory: Path, out: Path) -> Path:
    import shutil

    shutil.copytree(directory, out)
    meta = json.loads((out / "prunekit.json").read_text())
    for p in meta["plans"]:
        p["meta"].pop("structure", None)
    (out / "prunekit.json").write_text(json.dumps(meta))
    return out


def bench_model(name: str, size: int, repeat: int) -> dict:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    build = lambda: timm.create_model(name, num_classes=10).eval()  # noqa: E731
    model = build()
    x = torch.randn(1, 3, size, size)
    t0 = time.perf_counter()
    pk.prune(model, x, ratio=0.3)
    prune_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        d = pk.save_pruned(model, Path(tmp) / "m")
        old = _strip_records(d, Path(tmp) / "old")
        weights = d / "model.safetensors"
        times = {"state_dict": [], "load_pruned": [], "replay": []}
        for _ in range(repeat):
            shaped, fresh = copy.deepcopy(model), build()
            t0 = time.perf_counter()
            shaped.load_state_dict(load_file(str(weights)), strict=True)
            times["state_dict"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pk.load_pruned(d, fresh)
            times["load_pruned"].append(time.perf_counter() - t0)
            del shaped, fresh
        for _ in range(max(1, repeat // 2)):
            fresh = build()
            t0 = time.perf_counter()
            pk.load_pruned(old, fresh)
            times["replay"].append(time.perf_counter() - t0)
        check = pk.load_pruned(d, build())
        same = bool(torch.equal(check(x), model(x)))
        size_mb = weights.stat().st_size / 2 ** 20
    med = {k: median(v) for k, v in times.items()}
    return {"input": [1, 3, size, size], "params_after": sum(p.numel() for p in model.parameters()),
            "weights_mb": round(size_mb, 1), "prune_s": round(prune_s, 3), "same_outputs": same,
            **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "load_pruned_over_state_dict": round(med["load_pruned"] / med["state_dict"], 2),
            "replay_over_state_dict": round(med["replay"] / med["state_dict"], 2)}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    dev = device(args.device)
    models = [("resnet18", 64), ("densenet121", 64)] if args.quick else \
        [("vit_base_patch16_224", 224), ("resnet50", 224), ("densenet121", 224)]
    repeat = 2 if args.quick else 7
    rows = {name: bench_model(name, size, repeat) for name, size in models}
    write("load_time", {"models": rows, "repeat": repeat, "goal": "load_pruned <= 2x state_dict",
                        "met": all(r["load_pruned_over_state_dict"] <= 2.0 for r in rows.values())}, args.out, dev)


if __name__ == "__main__":
    main()
