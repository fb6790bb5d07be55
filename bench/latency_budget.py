"""A latency budget against a MACs budget: three architectures pruned to 0.5x their measured latency and to 0.5x
their MACs on this CPU, the latency each reaches, and the top-1 after the same recovery (issue #26, point 4).

For a ResNet (timm ``resnet18``), a MobileNet (``mobilenetv2_100``: depthwise convolutions, whose MACs are cheap but
whose memory traffic is not) and a ViT (``vit_tiny_patch16_224`` at 32 px, patch 4, dim 192, depth 6), each pretrained
on Fashion-MNIST at 32 px (bench/fmnist.py, cached), prunekit prunes once with
``prune(model, x, ratio=0.5, target="latency", latency=LatencyMeter(batch_size=32, threads=1))`` and once with
``target="macs"`` (scorer ``l1_mean``, global). Latency is then measured side by side: the unpruned and both pruned
models, one forward of 32 images each per round, 30 interleaved rounds, one thread, the median per model. Both pruned
models get the same recovery (2 epochs of AdamW on 5,000 training images, bench/fmnist.py) and are evaluated on 3,000
test images.

    python bench/latency_budget.py   # 38 min on 2 CPU cores, 31 of them pretraining the three models (cached after)
"""
from __future__ import annotations

import copy
import time

import torch

import prunekit as pk
from prunekit.budget.search import count_macs, count_parameters

import fmnist
from common import device, parser, write

ARCHS = ["resnet18", "mobilenetv2_100", "vit_tiny"]
BATCH, ROUNDS = 32, 30


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=ARCHS)
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of the latency / MACs to remove")
    p.add_argument("--epochs", type=int, default=2, help="recovery epochs (the same for both budgets)")
    args = p.parse_args()
    dev = device("cpu")
    data = fmnist.splits(512 if args.quick else 5000, 256, 256 if args.quick else 3000)
    meter = pk.LatencyMeter(batch_size=BATCH, threads=1, repeats=5 if args.quick else 21)
    x = torch.zeros(1, 1, fmnist.IMG, fmnist.IMG)
    rows = []
    for arch in args.archs:
        base, base_top1 = fmnist.pretrained(arch, data, quick=args.quick)
        models, info = {"unpruned": base}, {}
        for target in ("latency", "macs"):
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            plan = pk.prune(model, x, ratio=args.ratio, target=target, scorer="l1_mean",
                            latency=meter if target == "latency" else None)
            info[target] = {"prune_seconds": time.perf_counter() - t0, "planned": plan.meta.get("latency")}
            models[target] = model
        ms = fmnist.latency_ms(models, BATCH, 3 if args.quick else ROUNDS)
        for target in ("latency", "macs"):
            model = models[target]
            after_prune = fmnist.top1(model, data.loader("test", 256))
            rec = fmnist.recover(model, data, args.epochs, seed=0, quick=args.quick)
            row = {"arch": arch, "budget": target, "ratio": args.ratio, "unpruned_top1": base_top1,
                   "top1_after_prune": after_prune, **rec, "latency_ms": ms[target], "unpruned_ms": ms["unpruned"],
                   "latency_kept": ms[target] / ms["unpruned"], "macs": count_macs(model, x),
                   "macs_kept": count_macs(model, x) / count_macs(base, x), "params": count_parameters(model),
                   "params_kept": count_parameters(model) / count_parameters(base), **info[target]}
            row["within_10pct"] = abs(row["latency_kept"] - (1 - args.ratio)) <= 0.1 * (1 - args.ratio)
            rows.append(row)
            print(f"{arch} {target}: latency {row['latency_kept']:.3f}x ({ms[target]:.1f} / {ms['unpruned']:.1f} "
                  f"ms), MACs {row['macs_kept']:.3f}x, top-1 {after_prune:.4f} -> {rec['top1']:.4f}", flush=True)
    write("latency_budget", {"batch": BATCH, "threads": 1, "rounds": ROUNDS, "ratio": args.ratio,
                             "epochs": args.epochs, "rows": rows, "table": table(rows)}, args.out, dev)


def table(rows: list[dict]) -> str:
    out = ["| model | budget | latency kept (target 0.5) | ms, batch 32 (unpruned) | MACs kept | params kept | "
           "top-1 pruned | top-1 recovered (unpruned) | prune s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['arch']} | {r['budget']} 0.5 | {r['latency_kept']:.3f} | {r['latency_ms']:.1f} "
                   f"({r['unpruned_ms']:.1f}) | {r['macs_kept']:.3f} | {r['params_kept']:.3f} | "
                   f"{100 * r['top1_after_prune']:.1f} | {100 * r['top1']:.2f} ({100 * r['unpruned_top1']:.2f}) | "
                   f"{r['prune_seconds']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
