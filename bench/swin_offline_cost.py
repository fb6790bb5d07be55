"""What the Swin-shaped offline benchmark costs on this machine: training / evaluation throughput of every method of
recipes/ablation_swin_offline.yaml and of the pretraining, and the durations they imply.

Throughput is measured in one process with ``--threads`` intra-op threads, in images per second of wall clock and
per second of CPU time (process time). On a shared machine the wall clock says what the other processes left; the
CPU-time rate says what a core does, so ``--cores`` free cores (``prunekit ablate --jobs N``: N cells side by side,
one thread each) would do about ``cores x`` that. The estimate adds, for every cell of the grid, its epochs x (its
task's training images / training rate of its method + validation images / evaluation rate), and the same for the
pretraining (full fine-tuning rate); calibration batches, pruning and writing the run directories are left out.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from common import device, parser, write
from prunekit.ablation.grid import load_ablation, plan_cells
from prunekit.errors import PrunekitError
from prunekit.recipe.spec import load_recipe
from prunekit.run import build_model
from prunekit.run.task import load_bundle
from prunekit.engine.strategy import get_strategy

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def rates(r, steps: int, classes: int = 10) -> dict[str, float]:
    """Training and evaluation images per second (wall and CPU time) of recipe ``r``'s model and method, at its
    batch size (random weights: the cost does not depend on them)."""
    batch = r.train.batch_size
    model = build_model(r, classes, random_weights=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, r.model.img_size, r.model.img_size, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    model.train()
    step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    train = (steps * batch / (time.perf_counter() - wall), steps * batch / (time.process_time() - cpu))
    model.eval()
    xe = torch.randn(2 * batch, 3, r.model.img_size, r.model.img_size, generator=g)
    with torch.no_grad():
        model(xe)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            model(xe)
    n = steps * 2 * batch
    evaluate = (n / (time.perf_counter() - wall), n / (time.process_time() - cpu))
    return {"trainable": sum(p.numel() for p in params), "train_wall": train[0], "train_cpu": train[1],
            "eval_wall": evaluate[0], "eval_cpu": evaluate[1]}


def method_key(method: dict) -> str:
    return method["name"]  # the backbone's forward and backward dominate: one rate per method family


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="intra-op threads while measuring")
    p.add_argument("--cores", type=int, default=2, help="free cores the estimate assumes (--jobs of the grid)")
    p.add_argument("--ablation", type=Path, default=RECIPES / "ablation_swin_offline.yaml")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = device(args.device)
    steps = 2 if args.quick else 12
    spec = load_ablation(args.ablation)
    base = str((args.ablation.parent / spec.base).resolve())
    cells = plan_cells(spec, load_recipe(base, spec.set).strategy.rho)
    recipes = {c.run_id: load_recipe(base, c.overrides) for c in cells}
    sizes, missing = {}, []
    for task in spec.task_labels:
        try:
            bundle = load_bundle(load_recipe(base, spec.task_overrides(task)))
            sizes[task] = (len(bundle.train), len(bundle.val))
        except PrunekitError as e:  # e.g. Fashion-MNIST not installed: that task is left out of the estimate
            missing.append(f"{task}: {e}")
    first = next(iter(recipes.values()))
    methods = {}  # per family the widest start: an iterative cell's adapters at sigma0 before a one-shot cell's
    for r in sorted(recipes.values(), key=lambda r: r.strategy.name == "none" or get_strategy(r.strategy.name).mode
                    != "iterative"):
        methods.setdefault(method_key(r.method), r)
    measured = {k: rates(r, steps) for k, r in sorted(methods.items())}
    pre = load_recipe(Path(base).parent / first.model.pretrain)
    measured["full (pretraining)"] = rates(pre, steps, classes=15)
    cpu_s = 0.0
    for c in cells:
        if c.task not in sizes:
            continue
        r, (n_train, n_val) = recipes[c.run_id], sizes[c.task]
        rate = measured[method_key(r.method)]
        epochs = (max(cycle for _, _, cycle in c.provides) + 1) * r.train.epochs
        cpu_s += epochs * (n_train / rate["train_cpu"] + n_val / rate["eval_cpu"])
    pre_data = load_bundle(pre) if not args.quick else None
    full = measured["full (pretraining)"]
    pre_s = None if pre_data is None else pre.train.epochs * (
        len(pre_data.train) / full["train_cpu"] + len(pre_data.val) / full["eval_cpu"])
    for k, v in measured.items():
        print(f"{k:20s} trainable {v['trainable']:>9,}  train {v['train_wall']:6.0f} img/s wall, {v['train_cpu']:6.0f} "
              f"img/cpu-s; eval {v['eval_wall']:6.0f} / {v['eval_cpu']:6.0f}")
    grid_h = cpu_s / args.cores / 3600
    print(f"grid: {len(cells)} runs, {cpu_s / 3600:.2f} CPU-hours of training and evaluation -> about {grid_h:.2f} h "
          f"on {args.cores} free cores" + (f" (left out: {missing})" if missing else ""))
    if pre_s is not None:
        print(f"pretraining: {pre.train.epochs} epochs of {len(pre_data.train):,} + {len(pre_data.val):,} images -> "
              f"about {pre_s / args.cores / 60:.0f} min on {args.cores} free cores ({pre_s / 60:.0f} CPU-minutes)")
    write("swin_offline_cost", {"methods": measured, "task_sizes": sizes, "tasks_left_out": missing,
                                "grid_runs": len(cells), "grid_cpu_hours": cpu_s / 3600, "cores": args.cores,
                                "grid_hours": grid_h, "pretrain_cpu_minutes": None if pre_s is None else pre_s / 60,
                                "threads": args.threads, "steps": steps, "load_average": _load()}, args.out, dev)


def _load() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


if __name__ == "__main__":
    main()
