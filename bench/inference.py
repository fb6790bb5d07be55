"""Inference cost: (a) the backbone alone, (b) with sigma-0 adapters, (c) each TINA cycle's pruned model.

An emptied adapter is removed (its wrapper replaced by the bare sub-layer), so (c) approaches (a) as cycles go. Two
sources of cycles, labelled in every row: **trained**, the cycles of a real quickstart run (``prunekit run
quickstart``, rebuilt with ``load_run``), and **untrained**, a real schedule (rho = 0.5, the Eq. 2 score, global
selection) applied with no training in between to adapters whose ``up`` weights are random and scaled by a random
factor per adapter (so which adapters survive is arbitrary). Latency: batch 1; throughput: a larger batch. Models: the
offline default's ViT (32 px) and Swin-T (224 px, untrained only: it cannot be trained on this CPU).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import timm
import torch
from torch import nn

from common import device, median, parser, quickstart_run, run_cycles, small_vit, strip_adapters, timeit, write
from prunekit import Engine, find_adapters, inject_adapters, mark_trainable


def tina_cycles(model: nn.Module, x1: torch.Tensor, sigma_target: float) -> list[tuple[str, nn.Module]]:
    """Pruned copies of ``model`` after every prune of a TINA schedule (no training between prunes)."""
    snapshots = []
    engine = Engine(model, lambda m, opt, c: {}, example_inputs=x1, strategy="tina", rho=0.5,
                    sigma_target=sigma_target)
    engine.add_callback("on_prune", lambda eng, plan: snapshots.append(
        (f"untrained: TINA cycle {plan.meta['cycle'] + 1} (sigma {eng.sigma(eng.widths()):.0f}, "
         f"{len(find_adapters(eng.model))} adapters)", copy.deepcopy(eng.model))))
    engine.run()
    return snapshots


@torch.no_grad()
def measure(model, img, batch, dev, repeat, chans=3):
    model.eval()
    x1 = torch.randn(1, chans, img, img, device=dev)
    xb = torch.randn(batch, chans, img, img, device=dev)
    latency = median(timeit(lambda: model(x1), dev, repeat=repeat * 3, warmup=2))
    throughput = batch / median(timeit(lambda: model(xb), dev, repeat=repeat, warmup=1))
    return {"latency_ms": 1e3 * latency, "images_per_s": throughput}


def scenario(name, make, img, batch, sigma0, sigma_target, dev, repeat):
    base = make().to(dev).eval()
    adapted = copy.deepcopy(base)
    inject_adapters(adapted, sigma=sigma0)
    mark_trainable(adapted)
    torch.manual_seed(0)
    for a in find_adapters(adapted).values():
        nn.init.normal_(a.up.weight, std=0.02)
        with torch.no_grad():  # adapters of unequal importance, as after training
            a.up.weight.mul_(torch.rand(()) * 2)
    models = [("backbone alone", base), (f"untrained: adapters sigma={sigma0:g}", adapted)]
    models += tina_cycles(copy.deepcopy(adapted), torch.zeros(1, 3, img, img, device=dev), sigma_target)
    return measure_all(name, models, img, batch, dev, repeat)


def measure_all(name, models, img, batch, dev, repeat, chans=3):
    rows = []
    for label, m in models:
        r = {"model": label, **measure(m, img, batch, dev, repeat, chans)}
        rows.append(r)
        print(f"{name}: {label:<55} latency {r['latency_ms']:.2f} ms  throughput {r['images_per_s']:.1f} img/s")
    base_ips = rows[0]["images_per_s"]
    for r in rows:
        r["throughput_vs_backbone"] = r["images_per_s"] / base_ips
    return rows


def trained_scenario(run_dir, batch, dev, repeat):
    """The backbone alone and every cycle of a finished quickstart run, as trained (``load_run``)."""
    from prunekit.run import load_run

    models = []
    for rec in run_cycles(run_dir):
        recipe, model, _ = load_run(run_dir, rec["cycle"])
        if not models:
            models.append(("backbone alone (the run's backbone and head)", strip_adapters(copy.deepcopy(model))))
        models.append((f"trained: quickstart cycle {rec['cycle']} (sigma {rec['sigma']:.0f}, "
                       f"{len(find_adapters(model))} adapters, top-1 {100 * rec['last_top1']:.1f} %)", model.to(dev)))
    models[0] = (models[0][0], models[0][1].to(dev))
    return measure_all("offline_default_vit_trained", models, recipe.model.img_size, batch, dev, repeat,
                       recipe.model.in_chans)


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    dev = device(args.device)
    repeat = 2 if args.quick else 7
    results = {"offline_default_vit": scenario("offline_default_vit", lambda: small_vit(dim=96, depth=6), 32,
                                               16 if args.quick else 256, 8, 64, dev, repeat)}
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = quickstart_run(args.quick, Path(scratch))
        results["offline_default_vit_trained"] = trained_scenario(run_dir, 16 if args.quick else 256, dev, repeat)
    if not args.quick:
        results["swin_t"] = scenario("swin_t", lambda: timm.create_model("swin_tiny_patch4_window7_224",
                                                                         num_classes=100), 224,
                                     64 if dev.type == "cuda" else 8, 32, 512, dev, repeat)
    write("inference", {"scenarios": results}, args.out, dev)


if __name__ == "__main__":
    main()
