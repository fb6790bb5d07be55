"""A recovery benchmark that can rank pruning criteria: a pretrained ResNet-18 on all ten Fashion-MNIST classes,
pruned to 1/2, 1/4 and 1/8 of its MACs, recovered with one small fixed budget, 3 seeds (issue #26, point 3).

The model is timm's ``resnet18`` at 32 px, one channel, pretrained on the 60,000 training images (bench/fmnist.py,
cached). Rows, all at the same MACs (torch-pruning's counter on one 32 px image):

* ``prunekit_<scorer>`` for ``l1_mean``, ``lamp`` and ``taylor``: ``prunekit.prune(model, x, ratio, target="macs",
  scorer=...)`` (global scope; Taylor on 8 batches of the recovery subset), each ``+kd`` too: the same pruned model
  recovered with distillation from the unpruned one (``prunekit.Distill()`` defaults: alpha 0.5, T 4);
* ``tp_magnitude`` / ``tp_taylor``: torch-pruning's ``BasePruner``, ``global_pruning=True``, the classifier ignored,
  ``GroupMagnitudeImportance(p=2)`` / ``GroupTaylorImportance()`` (gradients of the same 8 batches), its channel ratio
  bisected until the MACs are within 1 % of the target;
* ``modelopt_fastnas``: NVIDIA ModelOpt's FastNAS (``mtp.prune(mode="fastnas", constraints={"flops": "<kept>%"})``),
  its score function the top-1 on 512 held-out training images, batch-norm statistics from 8 recovery batches;
* ``random``: ``prunekit.prune(..., scorer="random")``; ``unpruned``: the pretrained model with the same recovery.

Recovery (every row alike): 2 epochs of AdamW (lr 1e-3, cosine, weight decay 0.05) on a fixed subset of 5,000
training images, batch 64. Top-1 on the first 3,000 test images, right after pruning and after recovery. Latency: one
forward of 1 and of 32 images, one thread, every model of a budget and seed once per round, 20 interleaved rounds, the
median. Deterministic prunes (l1_mean, lamp, tp_magnitude, modelopt) are made once per budget and recovered with
every seed; Taylor and random prune again per seed (their batches and draws are the seed's).

    pip install nvidia-modelopt torchprofile==0.0.4 requests   # ModelOpt's FLOPs counter needs torchprofile 0.0.4
    apt-get install -y dataset-fashion-mnist
    python bench/recovery.py    # 45 min on 2 CPU cores (2026-12-02), plus the first pretraining (6 min, cached)

At full scale (ImageNet, ResNet-50, 90 epochs of recovery per row) the same grid is 3 budgets x 10 rows x 3 seeds =
90 fine-tuning runs of a few GPU-days each; the script takes ``--arch``, ``--recovery-images`` and ``--epochs``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import tempfile
import time
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

import prunekit as pk
from prunekit.budget.search import count_macs, count_parameters

import fmnist
from common import device, parser, write

BUDGETS = (0.5, 0.75, 0.875)  # MACs removed: 1/2, 1/4, 1/8 kept
SCORERS = ("l1_mean", "lamp", "taylor")
ROWS = ([f"prunekit_{s}{kd}" for s in SCORERS for kd in ("", "+kd")]
        + ["tp_magnitude", "tp_taylor", "modelopt_fastnas", "random"])
PER_SEED = ("prunekit_taylor", "tp_taylor", "random")  # prunes that depend on the seed's batches or draws
CALIBRATION = 8


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float, taylor: bool, calibration: list) -> None:
    imp = tp.importance.GroupTaylorImportance() if taylor else tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.BasePruner(model, x, importance=imp, global_pruning=True, pruning_ratio=ratio,
                                  ignored_layers=[model.get_classifier()])
    if taylor:
        model.zero_grad()
        for xb, yb in calibration:
            nn.functional.cross_entropy(model(xb), yb).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)


def tp_at_macs(model: nn.Module, x: torch.Tensor, target: float, taylor: bool, calibration: list,
               steps: int = 16) -> nn.Module:
    """torch-pruning at the channel ratio whose MACs are within 1 % of ``target`` removed (bisection on copies)."""
    before = count_macs(model, x)
    lo, hi, best = 0.0, 0.98, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model).train()
        tp_prune(m, x, mid, taylor, calibration)
        reached = 1 - count_macs(m, x) / before
        if best is None or abs(reached - target) < best[0]:
            best = (abs(reached - target), m)
        if abs(reached - target) < 0.01:
            break
        lo, hi = (mid, hi) if reached < target else (lo, mid)
    return best[1].eval()


def modelopt_prune(model: nn.Module, x: torch.Tensor, keep: float, data: fmnist.Splits) -> nn.Module:
    import modelopt.torch.prune as mtp

    held_out = data.loader("held_out", 256)
    calib = list(itertools.islice(iter(data.loader("recovery", 64)), CALIBRATION))
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        pruned, _ = mtp.prune(model=model, mode="fastnas", constraints={"flops": f"{100 * keep:g}%"},
                              dummy_input=x, config={"data_loader": calib, "score_func": lambda m: fmnist.top1(
                                  m, held_out), "checkpoint": str(Path(tmp) / "search.pth"), "verbose": False})
    return pruned.eval()


def prune(row: str, base: nn.Module, x: torch.Tensor, ratio: float, data: fmnist.Splits, seed: int) -> nn.Module:
    method = row.removesuffix("+kd")
    model = copy.deepcopy(base)
    calibration = list(itertools.islice(iter(data.loader("recovery", 64, seed=seed, shuffle=True)), CALIBRATION))
    if method.startswith("prunekit_") or method == "random":
        scorer = "random" if method == "random" else method.removeprefix("prunekit_")
        pk.prune(model, x, ratio=ratio, target="macs", scorer=scorer, seed=seed,
                 calibration=calibration if scorer == "taylor" else None)
        return model.eval()
    if method.startswith("tp_"):
        return tp_at_macs(model, x, ratio, method == "tp_taylor", calibration)
    if method == "modelopt_fastnas":
        return modelopt_prune(model, x, 1 - ratio, data)
    raise ValueError(row)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", choices=sorted(fmnist.ARCHS))
    p.add_argument("--budgets", type=float, nargs="*", default=list(BUDGETS), help="fractions of the MACs removed")
    p.add_argument("--rows", nargs="*", default=ROWS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--recovery-images", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=3000)
    args = p.parse_args()
    dev = device("cpu")
    t_start = time.perf_counter()
    skipped = {}
    try:
        import modelopt.torch.prune  # noqa: F401
    except ImportError as e:  # not a prunekit dependency: the row is left out, and the JSON says why
        skipped["modelopt_fastnas"] = f"{type(e).__name__}: {e}"
        args.rows = [r for r in args.rows if r != "modelopt_fastnas"]
        print(f"modelopt_fastnas left out ({skipped['modelopt_fastnas']}); pip install nvidia-modelopt "
              "torchprofile==0.0.4 requests", flush=True)
    data = fmnist.splits(256 if args.quick else args.recovery_images, 256 if args.quick else 512,
                         256 if args.quick else args.test_images)
    base, base_top1 = fmnist.pretrained(args.arch, data, quick=args.quick)
    x = torch.zeros(1, 1, fmnist.IMG, fmnist.IMG)
    macs0, params0 = count_macs(base, x), count_parameters(base)
    seeds, rounds = (1, 2) if args.quick else (args.seeds, 20)
    runs = []
    for seed in range(seeds):  # the unpruned model with the same recovery: the ceiling
        m = copy.deepcopy(base)
        runs.append({"row": "unpruned", "ratio": 0.0, "seed": seed, "top1_after_prune": base_top1,
                     **fmnist.recover(m, data, args.epochs, seed, quick=args.quick), "macs": macs0,
                     "params": params0, "prune_seconds": 0.0})
    for ratio in args.budgets:
        made: dict[str, tuple[nn.Module, float]] = {}
        for seed in range(seeds):
            models = {}
            for row in args.rows:
                method = row.removesuffix("+kd")
                key = method if method not in PER_SEED else f"{method}@{seed}"
                if key not in made:
                    t0 = time.perf_counter()
                    made[key] = (prune(row, base, x, ratio, data, seed), time.perf_counter() - t0)
                pruned, seconds = made[key]
                model = copy.deepcopy(pruned)
                after = fmnist.top1(model, data.loader("test", 256))
                rec = fmnist.recover(model, data, args.epochs, seed, teacher=base if row.endswith("+kd") else None,
                                     quick=args.quick)
                models[row] = model
                run = {"row": row, "ratio": ratio, "seed": seed, "top1_after_prune": after, **rec,
                       "macs": count_macs(model, x), "params": count_parameters(model), "prune_seconds": seconds}
                runs.append(run)
                print(f"{ratio} {row} seed {seed}: MACs {run['macs'] / macs0:.3f}x, top-1 {after:.4f} -> "
                      f"{rec['top1']:.4f} ({time.perf_counter() - t_start:.0f} s)", flush=True)
            for batch in (1, 32):
                ms = fmnist.latency_ms(models, batch, rounds)
                for run in runs[-len(models):]:
                    run[f"latency_ms_b{batch}"] = ms[run["row"]]
    summary = summarise(runs, macs0, params0)
    write("recovery", {"arch": args.arch, "pretrained_top1": base_top1, "macs": macs0, "params": params0,
                       "epochs": args.epochs, "recovery_images": len(data.recovery), "test_images": len(data.test),
                       "seeds": seeds, "runs": runs, "summary": summary, "table": table(summary),
                       "verdicts": verdicts(summary), "skipped": skipped, "seconds": time.perf_counter() - t_start},
          args.out, dev)


def summarise(runs: list[dict], macs0: int, params0: int) -> list[dict]:
    out = []
    for (ratio, row), group in itertools.groupby(sorted(runs, key=lambda r: (r["ratio"], ROWS.index(r["row"]) if
                                                                             r["row"] in ROWS else -1)),
                                                 key=lambda r: (r["ratio"], r["row"])):
        rs = list(group)
        after, after_sd = fmnist.mean_std([r["top1_after_prune"] for r in rs])
        top1, sd = fmnist.mean_std([r["top1"] for r in rs])
        out.append({"ratio": ratio, "row": row, "seeds": len(rs), "top1_after_prune": after,
                    "top1_after_prune_std": after_sd, "top1": top1, "top1_std": sd,
                    "macs_kept": rs[0]["macs"] / macs0, "params_kept": rs[0]["params"] / params0,
                    "latency_ms_b1": _median(rs, "latency_ms_b1"), "latency_ms_b32": _median(rs, "latency_ms_b32"),
                    "prune_seconds": max(r["prune_seconds"] for r in rs)})
    return out


def _median(rs: list[dict], key: str) -> float | None:
    import statistics

    xs = [r[key] for r in rs if key in r]
    return statistics.median(xs) if xs else None


def verdicts(summary: list[dict]) -> list[str]:
    """Per budget: the best row after recovery, its lead over the next, and what distillation adds per scorer."""
    out = []
    for ratio in sorted({s["ratio"] for s in summary if s["ratio"] > 0}):
        rows = sorted((s for s in summary if s["ratio"] == ratio), key=lambda s: -s["top1"])
        best, second = rows[0], rows[1]
        kd = []
        for scorer in SCORERS:
            plain = next((s for s in rows if s["row"] == f"prunekit_{scorer}"), None)
            dist = next((s for s in rows if s["row"] == f"prunekit_{scorer}+kd"), None)
            if plain and dist:
                kd.append(f"{scorer} {100 * (dist['top1'] - plain['top1']):+.2f} (spread {100 * plain['top1_std']:.2f}"
                          f" / {100 * dist['top1_std']:.2f})")
        out.append(f"{1 - ratio:g} of the MACs kept: best {best['row']} {100 * best['top1']:.2f} ± "
                   f"{100 * best['top1_std']:.2f}, {100 * (best['top1'] - second['top1']):.2f} points over "
                   f"{second['row']} ({100 * second['top1']:.2f} ± {100 * second['top1_std']:.2f}); distillation: "
                   + ", ".join(kd))
    return out


def table(summary: list[dict]) -> str:
    lines = ["| MACs kept | row | top-1 pruned | top-1 recovered (mean ± std, 3 seeds) | MACs | params | "
             "ms batch 1 | ms batch 32 | prune s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lat1 = "" if s["latency_ms_b1"] is None else f"{s['latency_ms_b1']:.2f}"
        lat32 = "" if s["latency_ms_b32"] is None else f"{s['latency_ms_b32']:.1f}"
        lines.append(f"| {1 - s['ratio']:g} | {s['row']} | {100 * s['top1_after_prune']:.1f} | "
                     f"{100 * s['top1']:.2f} ± {100 * s['top1_std']:.2f} | {s['macs_kept']:.3f} | "
                     f"{s['params_kept']:.3f} | {lat1} | {lat32} | {s['prune_seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
