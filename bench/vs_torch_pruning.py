"""prunekit.prune vs torch-pruning's own global pruner on many architectures (issue #12).

Both sides remove 50 % of the parameters of the same randomly initialised model (a copy each), the classifier kept:

* prunekit: ``prunekit.prune(model, x, ratio=0.5, target="params")`` (global L1, heads where found);
* torch-pruning: ``tp.pruner.BasePruner`` with ``GroupMagnitudeImportance``, ``global_pruning=True``, the classifier in
  ``ignored_layers`` and ``num_heads`` for timm attention (as torch-pruning's ``prune_timm_vit.py`` example does,
  head dimensions pruned, ``num_heads`` / ``head_dim`` / ``attn_dim`` patched afterwards). Its ``pruning_ratio`` is
  a channel ratio, so it is bisected (on copies) until the parameters removed are within 1 % of the same target;
  ``seconds`` is one pruner construction + ``step()`` at the ratio found, ``seconds_with_search`` adds the bisection.

``seconds`` on both sides is the median of ``calls`` (5) calls, each on a fresh copy of the model, after a warm-up
(prunekit: one untimed call; torch-pruning: the bisection), so neither side pays first-call costs the other does not;
the two sides alternate call by call, so that a busy moment of the machine hits both.

A side *handles* a model when it prunes without raising, the forward works and the output shape is unchanged.
Latency: the pruned model over the unpruned one, batch 1 and a large batch, median of repeats, all three models timed
in one interleaved loop so that machine load hits them alike.

    OMP_NUM_THREADS=1 python bench/vs_torch_pruning.py          # about 15 min on a shared 2-core machine
"""
from __future__ import annotations

import copy
import gc
import statistics
import time
import traceback

import timm
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import prunekit as pk
from prunekit.budget.search import count_macs, count_parameters

from common import device, interleaved, parser, write

# name: (library, constructor kwargs, input size)
MODELS = {
    "resnet18": ("timm", {}, 64),
    "resnet50": ("timm", {}, 64),
    "vgg11": ("timm", {}, 64),
    "mobilenetv2_050": ("timm", {}, 64),
    "efficientnet_b0": ("timm", {}, 64),
    "ghostnet_050": ("timm", {}, 64),
    "regnetx_002": ("timm", {}, 64),
    "densenet121": ("timm", {}, 64),
    "convnext_atto": ("timm", {}, 64),
    "mixer_s16_224": ("timm", {"img_size": 64}, 64),
    "vit_tiny_patch16_224": ("timm", {"img_size": 64, "patch_size": 8}, 64),
    "deit_tiny_distilled_patch16_224": ("timm", {"img_size": 64, "patch_size": 8}, 64),
    "swin_tiny_patch4_window7_224": ("timm", {"img_size": 64, "window_size": 4}, 64),
    "pvt_v2_b0": ("timm", {}, 64),
    "mobilevit_xxs": ("timm", {}, 64),
    "squeezenet1_1": ("torchvision", {}, 64),
    "googlenet": ("torchvision", {"aux_logits": False, "init_weights": False}, 64),
    "shufflenet_v2_x0_5": ("torchvision", {}, 64),
}
CLASSES = 10


def build(name: str) -> nn.Module:
    lib, kwargs, _ = MODELS[name]
    torch.manual_seed(0)
    if lib == "torchvision":
        return getattr(torchvision.models, name)(num_classes=CLASSES, **kwargs).eval()
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs).eval()


def shapes(out) -> list:
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(o.shape) for o in outs]


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> None:
    """torch-pruning's global magnitude pruner at channel ratio ``ratio``, in place."""
    ignored = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == CLASSES)
               or (isinstance(m, nn.Conv2d) and m.out_channels == CLASSES)]
    num_heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")
                 and isinstance(m.qkv, nn.Linear)}
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=True, pruning_ratio=ratio, ignored_layers=ignored,
                                  num_heads=num_heads)
    pruner.step()
    for m in model.modules():  # the example's fix-up: timm's attention reshapes with num_heads / head_dim
        if hasattr(m, "qkv") and m.qkv in num_heads:
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim


def tp_at_params(model: nn.Module, x: torch.Tensor, target: float, steps: int) -> tuple[float, float]:
    """Bisect torch-pruning's channel ratio until ``target`` of the parameters go; returns (ratio, reached)."""
    before = count_parameters(model)
    lo, hi, best = 0.0, 0.95, (0.0, 0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        tp_prune(m, x, mid)
        reached = 1 - count_parameters(m) / before
        if abs(reached - target) < abs(best[1] - target):
            best = (mid, reached)
        if abs(reached - target) < 0.01:
            break
        lo, hi = (mid, hi) if reached < target else (lo, mid)
    return best


def latencies(models: dict[str, nn.Module], x: torch.Tensor, repeat: int) -> dict[str, float]:
    """Median seconds per forward of each model on ``x``, the models interleaved in every repeat."""
    with torch.inference_mode():
        return interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, repeat)


def timed(base: nn.Module, prune_fns: dict, calls: int) -> dict[str, tuple[nn.Module, float]]:
    """Median seconds of every side's prune on ``calls`` fresh copies of ``base`` (the copying not timed), the sides
    alternating call by call so that machine load hits them alike; the last copy of each. Python's garbage is
    collected before every timed call, so that no call pays the cyclic collector for the copying (or for the other
    side's last call): each pays for the collections its own allocations trigger."""
    seconds: dict[str, list[float]] = {k: [] for k in prune_fns}
    last = {}
    for _ in range(calls):
        for side, fn in prune_fns.items():
            m = copy.deepcopy(base)
            last.pop(side, None)
            gc.collect()
            t0 = time.perf_counter()
            fn(m)
            seconds[side].append(time.perf_counter() - t0)
            last[side] = m
    return {k: (last[k], statistics.median(v)) for k, v in seconds.items()}


def run_model(name: str, ratio: float, big: int, repeat: int, bisect: int, calls: int) -> dict:
    size = MODELS[name][2]
    base = build(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = shapes(base(x))
    row = {"params": count_parameters(base), "macs": count_macs(base, x), "input": size}
    fns, extra = {}, {}
    for side in ("prunekit", "torch-pruning"):  # warm-ups: prunekit one call, torch-pruning its bisection
        try:
            if side == "prunekit":
                m = copy.deepcopy(base)
                pk.prune(m, x, ratio=ratio, target="params")
                fns[side] = lambda c: pk.prune(c, x, ratio=ratio, target="params")
                extra[side] = {}
            else:
                t0 = time.perf_counter()
                r, _ = tp_at_params(base, x, ratio, bisect)
                extra[side] = {"channel_ratio": r, "search_seconds": time.perf_counter() - t0}
                m = copy.deepcopy(base)
                tp_prune(m, x, r)
                fns[side] = lambda c, r=r: tp_prune(c, x, r)
            with torch.no_grad():
                out = shapes(m(x))
            if out != ref:
                raise RuntimeError(f"output shapes changed from {ref} to {out}")
        except Exception as e:  # noqa: BLE001 - a failure is a result here
            row[side] = {"handled": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            fns.pop(side, None)
            traceback.print_exc()
    pruned = {}
    for side, (m, seconds) in timed(base, fns, calls).items():
        more = extra[side]
        if "search_seconds" in more:
            more = {"channel_ratio": more["channel_ratio"], "seconds_with_search": more["search_seconds"] + seconds}
        pruned[side] = m
        row[side] = {"handled": True, "seconds": seconds, "params": count_parameters(m), "macs": count_macs(m, x),
                     "params_removed": 1 - count_parameters(m) / row["params"],
                     "macs_removed": 1 - count_macs(m, x) / row["macs"], **more}
    for batch in (1, big):
        xb = torch.randn(batch, 3, size, size)
        lat = latencies({"unpruned": base, **pruned}, xb, repeat)
        row[f"latency_b{batch}_ms"] = {k: 1e3 * v for k, v in lat.items()}
        for side in pruned:
            row[side][f"latency_ratio_b{batch}"] = lat[side] / lat["unpruned"]
    return row


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="a subset of the models (default: all)")
    args = p.parse_args()
    dev = device("cpu")  # CPU latency is what this benchmark reports
    names = args.models or (["resnet18", "vit_tiny_patch16_224"] if args.quick else list(MODELS))
    ratio, big = 0.5, (4 if args.quick else 32)
    repeat, bisect = (3, 4) if args.quick else (7, 12)
    calls = 1 if args.quick else 5
    rows = {}
    for name in names:
        t0 = time.perf_counter()
        rows[name] = run_model(name, ratio, big, repeat, bisect, calls)
        r = rows[name]
        print(f"{name}: " + "; ".join(
            f"{s} " + (f"{r[s]['params_removed']:.3f} params, {r[s]['macs_removed']:.3f} MACs, "
                       f"{r[s]['seconds']:.2f} s, lat {r[s]['latency_ratio_b1']:.2f}/"
                       f"{r[s][f'latency_ratio_b{big}']:.2f}"
                       if r[s]["handled"] else r[s]["error"]) for s in ("prunekit", "torch-pruning"))
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    write("vs_torch_pruning", {"ratio": ratio, "target": "params", "big_batch": big, "repeat": repeat, "calls": calls,
                               "models": rows}, args.out, dev)


if __name__ == "__main__":
    main()
