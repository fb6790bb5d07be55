"""Training cost per step: frozen-backbone adaptation (sigma 32 adapters) vs full fine-tuning, and peak memory.

The backward pass of adapter training still crosses the frozen backbone (to reach the early adapters), so the
saving is the weight gradients and the optimizer state, not the backward itself: the ratio is reported as measured.
Peak memory: on CUDA ``max_memory_allocated``; on CPU the growth of the process's peak resident memory (each
configuration runs in its own subprocess so the peaks don't mix).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import timm
import torch
from torch import nn

from common import device, median, parser, small_vit, sync, write
from prunekit import inject_adapters, mark_trainable


def build(model_name: str, method: str, dev):
    if model_name == "small_vit":
        model = small_vit(dim=192, depth=6, classes=100)
        img = 32
    else:
        model = timm.create_model(model_name, num_classes=100)
        img = 224
    if method == "adapters":
        inject_adapters(model, sigma=32)
        mark_trainable(model)
    return model.to(dev), img


def child(model_name: str, method: str, batch: int, steps: int, dev_name: str) -> dict:
    dev = torch.device(dev_name)
    model, img = build(model_name, method, dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g).to(dev)
    y = torch.randint(0, 100, (batch,), generator=g).to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps + 1):
        sync(dev)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(dev)
        if i:  # the first step allocates the optimizer state
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    return {"step_seconds": median(times), "peak_bytes": peak,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--child", nargs=4, metavar=("MODEL", "METHOD", "BATCH", "STEPS"), help=argparse_hidden())
    args = p.parse_args()
    dev = device(args.device)
    if args.child:
        m, method, batch, steps = args.child
        print(json.dumps(child(m, method, int(batch), int(steps), str(dev))))
        return
    configs = [("small_vit", 8 if args.quick else 64, 2 if args.quick else 8)]
    if not args.quick:
        configs.append(("swin_tiny_patch4_window7_224", 64 if dev.type == "cuda" else 8, 3))
    results = {}
    for model_name, batch, steps in configs:
        row = {}
        for method in ("adapters", "full"):
            out = subprocess.run([sys.executable, __file__, "--device", str(dev), "--child", model_name, method,
                                  str(batch), str(steps)], capture_output=True, text=True, check=True)
            row[method] = json.loads(out.stdout.strip().splitlines()[-1])
        row["step_time_ratio_adapters_over_full"] = row["adapters"]["step_seconds"] / row["full"]["step_seconds"]
        row["peak_memory_ratio_adapters_over_full"] = row["adapters"]["peak_bytes"] / max(1, row["full"]["peak_bytes"])
        row["batch"] = batch
        results[model_name] = row
        print(f"{model_name} (batch {batch}): step adapters {row['adapters']['step_seconds']:.3f} s vs full "
              f"{row['full']['step_seconds']:.3f} s (ratio {row['step_time_ratio_adapters_over_full']:.2f}); peak "
              f"memory {row['adapters']['peak_bytes'] / 2**20:.0f} MiB vs {row['full']['peak_bytes'] / 2**20:.0f} MiB")
    write("train_cost", {"models": results}, args.out, dev)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
