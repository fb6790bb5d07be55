"""Training throughput: prunekit's training loop vs a bare hand-written PyTorch loop, side by side.

Same model (ViT 32 px, patch 4, dim 192, depth 6, series adapters sigma 8, frozen backbone), same batches in memory,
same optimizer and schedule, same precision. The two loops alternate (A B A B ...) so drift hits both. Goal: ratio
prunekit / bare >= 0.95.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common import device, median, parser, small_vit, sync, write
from prunekit import inject_adapters, mark_trainable
from prunekit.recipe.sections import TrainSection
from prunekit.train.trainer import Trainer, resolve_precision, warmup_cosine


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    dev = device(args.device)
    steps, rounds, batch = (4, 2, 16) if args.quick else (30, 4, 64)
    model = small_vit(dim=96 if args.quick else 192).to(dev)
    inject_adapters(model, sigma=8)
    mark_trainable(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (steps * batch,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    cfg = TrainSection(epochs=1, warmup_epochs=0, lr=1e-3, batch_size=batch, device=str(dev), precision="auto")
    trainer = Trainer(cfg, loader, loader, dev)
    bf16 = resolve_precision("auto", dev)

    def prunekit_epoch():
        opt = trainer.make_optimizer(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, 0, 0.0))
        trainer.train_epoch(model, opt, sched, 0, 0, steps)

    def bare_epoch():
        opt = trainer.make_optimizer(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, 0, 0.0))
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    times = {"prunekit": [], "bare": []}
    bare_epoch()  # warm-up (allocator, kernels)
    for _ in range(rounds):
        for name, fn in (("prunekit", prunekit_epoch), ("bare", bare_epoch)):
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - t0)
    ips = {k: steps * batch / median(v) for k, v in times.items()}
    ratio = ips["prunekit"] / ips["bare"]
    print(f"prunekit {ips['prunekit']:.1f} img/s, bare {ips['bare']:.1f} img/s, ratio {ratio:.3f} (goal >= 0.95)")
    write("train_throughput", {"images_per_s": ips, "ratio": ratio, "goal": 0.95, "met": ratio >= 0.95,
                               "steps_per_epoch": steps, "batch": batch, "rounds": rounds, "seconds": times,
                               "bf16": bf16}, args.out, dev)


if __name__ == "__main__":
    main()
