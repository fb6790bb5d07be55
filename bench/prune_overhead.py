"""Pruning overhead: everything the engine does per cycle besides training, vs one training epoch.

The headline figure is the engine's whole overhead: a real ``Engine`` (TINA: Eq. 2, global, rho 0.5) runs its full
schedule with a ``train_fn`` that only records its own time; the engine's wall time (construction included: the
first trace, the budget check, the cycle count) minus the time spent in ``train_fn``, divided by the number of
prunes, is the overhead of one cycle. Beside it, one prune step taken apart (groups + score + select + slice + new
optimizer), and group discovery alone.

Swin-T and ViT-B/16 (random weights, 224 px, sigma 32 adapters; the epoch is CIFAR-100's 50,000 images at the
measured time per training image) and the offline default (the quickstart's ViT on scikit-learn digits: a real
epoch). Goal: the engine's overhead per cycle is < 1 % of an epoch.
"""
from __future__ import annotations

import copy
import time

import timm
import torch
from torch import nn

from common import device, median, parser, small_vit, sync, timeit, write
from prunekit import Engine, inject_adapters, mark_trainable
from prunekit.adapters.groups import adapter_groups
from prunekit.ranking.scopes import global_scope
from prunekit.ranking.scorers import score_groups, tina


def prune_step(model: nn.Module, x: torch.Tensor, dev) -> dict[str, float]:
    """Seconds of each phase of one TINA prune (rho = 0.5) and of the optimizer rebuild."""
    t = [time.perf_counter()]
    groups = adapter_groups(model, x)
    t.append(time.perf_counter())
    scores = score_groups(groups, tina)
    t.append(time.perf_counter())
    plan = global_scope(scores, 0.5)
    t.append(time.perf_counter())
    plan.apply(model, groups)
    sync(dev)
    t.append(time.perf_counter())
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    t.append(time.perf_counter())
    phases = ("groups", "score", "select", "slice", "optimizer")
    out = {k: t[i + 1] - t[i] for i, k in enumerate(phases)}
    out["total"] = t[-1] - t[0]
    return out


def engine_overhead(model: nn.Module, x: torch.Tensor, sigma0: float, dev) -> dict[str, float]:
    """Seconds the engine spends outside ``train_fn`` over a TINA schedule (sigma0 -> 8 sigma0: 3 prunes), per prune."""
    in_train = []

    def train_fn(m, optimizer, cycle):
        t0 = time.perf_counter()
        sync(dev)
        in_train.append(time.perf_counter() - t0)
        return {}

    t0 = time.perf_counter()
    engine = Engine(model, train_fn, example_inputs=x, strategy="tina", rho=0.5, sigma_target=8 * sigma0)
    engine.run()
    sync(dev)
    total = time.perf_counter() - t0 - sum(in_train)
    prunes = engine.cycles - 1
    return {"total": total, "prunes": prunes, "per_prune": total / prunes}


def train_seconds_per_image(model, x, y, dev, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median(timeit(step, dev, repeat=steps, warmup=1)) / len(x)


def scenario(name, make, img, batch, epoch_images, dev, repeat, steps, real_epoch=None):
    model = make().to(dev)
    sigma0 = 32 if real_epoch is None else 8
    inject_adapters(model, sigma=sigma0)
    mark_trainable(model)
    for a in (m for m in model.modules() if hasattr(m, "residual")):
        nn.init.normal_(a.up.weight, std=0.02)  # trained-looking adapters: scores differ
    x1 = torch.zeros(1, 3, img, img, device=dev)
    discovery = timeit(lambda: adapter_groups(model, x1), dev, repeat=repeat)
    prunes = [prune_step(copy.deepcopy(model), x1, dev) for _ in range(repeat)]
    prune = {k: median([p[k] for p in prunes]) for k in prunes[0]}
    runs = [engine_overhead(copy.deepcopy(model), x1, sigma0, dev) for _ in range(max(1, repeat // 2))]
    overhead = {k: median([r[k] for r in runs]) for k in runs[0]}
    if real_epoch is not None:
        epoch = real_epoch(model)
        how = "measured epoch"
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, img, img, generator=g).to(dev)
        y = torch.randint(0, 10, (batch,), generator=g).to(dev)
        epoch = train_seconds_per_image(model, x, y, dev, steps) * epoch_images
        how = f"{epoch_images} images x measured seconds per training image (batch {batch})"
    share = overhead["per_prune"] / epoch
    print(f"{name}: engine overhead {overhead['per_prune'] * 1e3:.1f} ms per prune ({overhead['prunes']:.0f} prunes, "
          f"{overhead['total']:.2f} s in all); prune step {prune['total'] * 1e3:.1f} ms ({', '.join(f'{k} {v * 1e3:.1f}' for k, v in prune.items() if k != 'total')} ms), "  # noqa: E501
          f"epoch {epoch:.1f} s -> {100 * share:.4f} % of an epoch (goal < 1 %); groups alone "
          f"{median(discovery) * 1e3:.1f} ms")
    return {"engine_overhead_seconds": overhead, "prune_seconds": prune, "epoch_seconds": epoch, "epoch_how": how,
            "share_of_epoch": share, "met": share < 0.01, "group_discovery_seconds": median(discovery),
            "groups": len(adapter_groups(model, x1))}


def offline_epoch(model):
    """One real epoch of the offline default: scikit-learn digits at 32 px, batch 64, through prunekit's Trainer."""
    from prunekit.data.datasets import load_data, make_loaders
    from prunekit.recipe.sections import DataSection, TrainSection
    from prunekit.train.trainer import Trainer

    bundle = load_data(DataSection(name="digits"), 32)
    train, val = make_loaders(bundle, 64, 128, 0, 0)
    trainer = Trainer(TrainSection(epochs=1, warmup_epochs=0, lr=3e-3, batch_size=64, device="cpu"), train, val,
                      torch.device("cpu"))
    opt = trainer.make_optimizer(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer.train_epoch(model, opt, sched, 0, 0, trainer.steps_per_epoch())  # warm-up
    t0 = time.perf_counter()
    trainer.train_epoch(model, opt, sched, 0, 1, trainer.steps_per_epoch())
    return time.perf_counter() - t0


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    dev = device(args.device)
    repeat, steps = (2, 2) if args.quick else (5, 3)
    batch = 64 if dev.type == "cuda" else 8
    results = {}
    if args.quick:
        results["tiny_vit"] = scenario("tiny_vit", lambda: small_vit(dim=96, depth=2), 32, 4, 50_000, dev, repeat,
                                       steps)
    else:
        results["swin_t"] = scenario("swin_t", lambda: timm.create_model("swin_tiny_patch4_window7_224",
                                                                         num_classes=100), 224, batch, 50_000, dev,
                                     repeat, steps)
        results["vit_b16"] = scenario("vit_b16", lambda: timm.create_model("vit_base_patch16_224", num_classes=100),
                                      224, batch, 50_000, dev, repeat, steps)
    if dev.type == "cpu":
        results["offline_default"] = scenario(
            "offline_default", lambda: small_vit(dim=96, depth=6 if not args.quick else 2), 32, 64, None, dev,
            repeat, steps, real_epoch=offline_epoch)
    write("prune_overhead", {"scenarios": results, "goal": "engine overhead per cycle < 1 % of an epoch"}, args.out,
          dev)


if __name__ == "__main__":
    main()
