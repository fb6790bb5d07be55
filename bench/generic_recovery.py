"""Accuracy recovery after pruning half the MACs of the quickstart's pretrained ViT (issue #12).

The backbone is the quickstart recipe's (``recipes/quickstart.yaml``: timm ``vit_tiny_patch16_224`` at 32 px, patch 4,
dim 96, depth 6, 3 heads, MNIST-5k-pretrained checkpoint), its head reset to the 10 digits classes. Each method
removes 50 % of the model's MACs by pruning MLP neurons and whole attention heads (the embedding width is kept), then
every parameter is fine-tuned for the same number of epochs on the quickstart's data (scikit-learn's digits, the
recipe's split and ``train`` settings, ``prunekit.train.trainer.Trainer``):

* ``unpruned``: the baseline, fine-tuned only;
* ``prunekit_l1``: ``prunekit.prune(..., target="macs", scorer="l1_mean")`` (coupled L1, divided by the group's mean:
  global ranking across MLPs and heads);
* ``prunekit_taylor``: ``scorer="taylor"`` on 8 training batches;
* ``torch_pruning``: ``tp.pruner.BasePruner`` with ``GroupMagnitudeImportance``, global, ``num_heads`` with
  ``prune_num_heads=True`` (whole heads), the residual width's layers ignored; its channel ratio is bisected until
  the MACs removed are within 1 % of 50 %;
* ``random``: ``prunekit.prune(..., scorer="random")``;
* ``prunekit_l1_uniform``: ``prunekit_l1`` with ``uniform=True`` (every block keeps the same MLP width and number of
  heads): what uniformity costs;
* ``prunekit_l1_uniform_native``: ``uniform=True`` with the residual width prunable too, so a head goes with
  ``head_dim`` channels of it and ``timm.create_model(**pk.architecture_kwargs(model))`` rebuilds the result (each
  run records whether it does: ``native``).

Latency is the median of 20 forwards of a batch of 256 at one thread (interleaved with nothing else: one method's
model at a time, after its fine-tuning).

Top-1 is the validation accuracy after the last epoch, 3 training seeds (the data split is the recipe's).

    OMP_NUM_THREADS=1 python bench/generic_recovery.py --epochs 6 --device cpu   # 6-18 min measured, shared 2-core CPU
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import time
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

import prunekit as pk
from prunekit.models.backbone import create_backbone, load_backbone_weights, load_checkpoint_file
from prunekit.budget.search import count_macs, count_parameters
from prunekit.data.datasets import make_loaders
from prunekit.recipe.spec import load_recipe
from prunekit.run.task import load_bundle
from prunekit.train.trainer import Trainer, seed_everything

from common import device, parser, write

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
METHODS = ["unpruned", "prunekit_l1", "prunekit_taylor", "torch_pruning", "random", "prunekit_l1_uniform",
           "prunekit_l1_uniform_native"]
KEEP_WIDTH = ["patch_embed.proj"]  # the residual width: only MLP neurons and heads are pruned


def backbone(recipe, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the new head's initial weights
    model = create_backbone(recipe.model, classes, pretrained=False)
    load_backbone_weights(model, load_checkpoint_file(recipe.model.checkpoint), recipe.model.checkpoint,
                          reset_head=True)
    return model


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> None:
    """torch-pruning's global magnitude pruner: MLP neurons and whole heads at channel ratio ``ratio``."""
    ignored = [model.patch_embed.proj, model.head] + [b.attn.proj for b in model.blocks] + [b.mlp.fc2 for b in
                                                                                              model.blocks]
    num_heads = {b.attn.qkv: b.attn.num_heads for b in model.blocks}
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=True, pruning_ratio=ratio, ignored_layers=ignored,
                                  num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=ratio)
    pruner.step()
    for b in model.blocks:  # torch-pruning's ViT example: timm's attention reshapes with these
        a = b.attn
        a.num_heads = pruner.num_heads[a.qkv]
        a.attn_dim = a.qkv.out_features // 3
        a.head_dim = a.attn_dim // a.num_heads


def tp_at_macs(model: nn.Module, x: torch.Tensor, target: float, steps: int = 14) -> float:
    """The channel ratio at which torch-pruning removes ``target`` of the MACs (bisection on copies)."""
    before = count_macs(model, x)
    lo, hi, best = 0.0, 0.95, (0.0, 1.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        tp_prune(m, x, mid)
        reached = 1 - count_macs(m, x) / before
        if abs(reached - target) < best[1]:
            best = (mid, abs(reached - target))
        if abs(reached - target) < 0.01:
            break
        lo, hi = (mid, hi) if reached < target else (lo, mid)
    return best[0]


def prune(method: str, model: nn.Module, x: torch.Tensor, ratio: float, calibration: list) -> dict:
    t0, extra = time.perf_counter(), {}
    if method == "torch_pruning":
        r = tp_at_macs(model, x, ratio)
        tp_prune(model, x, r)
        extra = {"channel_ratio": r}
    elif method != "unpruned":
        scorer = {"prunekit_l1": "l1_mean", "prunekit_taylor": "taylor", "random": "random",
                  "prunekit_l1_uniform": "l1_mean", "prunekit_l1_uniform_native": "l1_mean"}[method]
        pk.prune(model, x, ratio=ratio, target="macs", scorer=scorer,
                 ignore=[] if method.endswith("_native") else KEEP_WIDTH,
                 calibration=calibration if scorer == "taylor" else None, uniform="_uniform" in method)
    seconds = time.perf_counter() - t0
    try:  # whether timm's constructor can rebuild the result
        pk.architecture_kwargs(model)
        extra["native"] = True
    except pk.NotNativeError:
        extra["native"] = False
    return {"prune_seconds": seconds, **extra}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs, the same for every method")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--methods", nargs="*", default=METHODS)
    args = p.parse_args()
    dev = device(args.device)
    recipe = load_recipe(RECIPE)
    t = dataclasses.replace(recipe.train, epochs=1 if args.quick else args.epochs, device=str(dev))
    seeds = 1 if args.quick else args.seeds
    bundle = load_bundle(recipe)  # as a run loads it: the backbone's normalisation, the recipe's split
    x = torch.zeros(1, recipe.model.in_chans, recipe.model.img_size, recipe.model.img_size)
    runs = []
    for method, seed in itertools.product(args.methods, range(seeds)):
        t0 = time.perf_counter()
        seed_everything(seed)
        train_loader, val_loader = make_loaders(bundle, t.batch_size, 2 * t.batch_size, 0, seed)
        calibration = list(itertools.islice(iter(train_loader), 8))
        model = backbone(recipe, bundle.num_classes, seed).eval()
        params0, macs0 = count_parameters(model), count_macs(model, x)
        info = prune(method, model, x, args.ratio, calibration)
        params, macs = count_parameters(model), count_macs(model, x)
        trainer = Trainer(dataclasses.replace(t, seed=seed), train_loader, val_loader, dev)
        metrics = trainer.train_cycle(model, trainer.make_optimizer(model.parameters()), 0)
        latency = forward_ms(model, x, dev, quick=args.quick)
        runs.append({"method": method, "seed": seed, "top1": metrics["last_top1"], "best_top1": metrics["best_top1"],
                     "params": params, "macs": macs, "params_removed": 1 - params / params0,
                     "macs_removed": 1 - macs / macs0, "latency_ms": latency,
                     "widths": {"mlp": [b.mlp.fc1.out_features for b in model.blocks],
                                "heads": [b.attn.num_heads for b in model.blocks],
                                "embed": model.patch_embed.proj.out_channels}, **info,
                     "seconds": time.perf_counter() - t0})
        print(f"{method} seed {seed}: top1 {metrics['last_top1']:.4f}, MACs -{100 * (1 - macs / macs0):.1f} %, "
              f"params -{100 * (1 - params / params0):.1f} % ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = {}
    for method in args.methods:
        rs = [r for r in runs if r["method"] == method]
        top1 = [r["top1"] for r in rs]
        summary[method] = {"top1_mean": statistics.mean(top1), "top1_std": statistics.pstdev(top1), "top1": top1,
                           "params": rs[0]["params"], "macs": rs[0]["macs"], "params_removed": rs[0]["params_removed"],
                           "macs_removed": rs[0]["macs_removed"],
                           "latency_ms": statistics.median(r["latency_ms"] for r in rs)}
    write("generic_recovery", {"ratio": args.ratio, "target": "macs", "epochs": t.epochs, "seeds": seeds,
                               "recipe": "recipes/quickstart.yaml", "train": dataclasses.asdict(t), "runs": runs,
                               "summary": summary, "table": table(summary)}, args.out, dev)


def forward_ms(model: nn.Module, x: torch.Tensor, dev, quick: bool = False) -> float:
    """Median milliseconds of a forward of a batch of 256 (one thread, eval, no grad)."""
    from common import median, timeit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batch = torch.randn(16 if quick else 256, *x.shape[1:], device=dev)
    model.eval()
    try:
        with torch.no_grad():
            return 1000 * median(timeit(lambda: model(batch), dev, repeat=3 if quick else 20, warmup=2))
    finally:
        torch.set_num_threads(threads)


def table(summary: dict) -> str:
    rows = ["| method | top-1 (mean ± std over seeds) | params | MACs | MACs removed | latency (ms, batch 256) |",
            "|---|---:|---:|---:|---:|---:|"]
    for m, s in summary.items():
        rows.append(f"| {m} | {100 * s['top1_mean']:.2f} ± {100 * s['top1_std']:.2f} | {s['params']:,} | "
                    f"{s['macs']:,} | {100 * s['macs_removed']:.1f} % | {s['latency_ms']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
