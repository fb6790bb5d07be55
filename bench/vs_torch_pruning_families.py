"""prunekit.prune vs torch-pruning on the families beyond timm classifiers (issue #24): Hugging Face encoders,
decoders with and without grouped-query attention, GPT-2, HF vision transformers, torchvision Swin / MaxViT / MNASNet,
segmentation, detection and a U-Net (the models of tests/any_models.py, random weights).

Both sides remove 30 % of the parameters of the same model, its output layers kept:

* prunekit: ``prunekit.prune(model, x, ratio=0.3, target="params", scorer="l1_mean")`` (no other argument: a dict
  of inputs is ``model(**x)``, a ``ModelOutput`` the output);
* torch-pruning: ``tp.pruner.BasePruner`` with ``GroupMagnitudeImportance(p=2)``, ``global_pruning=True``, the output
  layers (classifier, ``lm_head``, box / class predictors: the layers whose output is returned) in
  ``ignored_layers``, and, as its ``examples/transformers`` and ``examples/LLMs`` scripts do, ``num_heads`` for every
  q / k / v projection (key / value heads for grouped-query attention), ``config.use_cache = False``, and the
  attention attributes and the config set by hand from the pruned shapes afterwards (``num_attention_heads``,
  ``attention_head_size``, ``all_head_size``, ``head_dim``, ``num_heads``, ``split_size``). Its ``pruning_ratio`` is a
  channel ratio, so it is bisected until the parameters removed are within 1 % of the target.

Every (model, side) runs in its own process with an address-space cap (``--mem-gb``, default 8) and a timeout
(``--timeout``, default 300 s): a walk that explodes is a result ("MemoryError", "timeout"), not a dead machine.
A side *handles* a model when it prunes, the forward works and every output tensor keeps its shape. Latency: the
pruned model over the unpruned one at batch 1, median of ``--repeat`` interleaved forwards.

    cd bench && OMP_NUM_THREADS=1 python vs_torch_pruning_families.py --timeout 90    # 13 min on 2 cores
"""
from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from any_models import MODELS, build  # noqa: E402

from common import device, parser, write  # noqa: E402

RATIO = 0.3


def call(model, x):
    with torch.no_grad():
        return model(**x) if isinstance(x, dict) else model(x)


def shapes(model, x) -> list:
    from prunekit.core.outputs import output_tensors

    return [tuple(t.shape) for t in output_tensors(call(model, x))]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x) -> int:
    from prunekit.budget.search import count_forward

    return count_forward(model, x).macs


# ------------------------------------------------------------------------------------------------- torch-pruning

def _output_layers(model: nn.Module, x) -> list[nn.Module]:
    """The layers whose output the model returns (what torch-pruning's examples put in ``ignored_layers``)."""
    from prunekit.core.graph import trace
    from prunekit.groups.channels import output_modules

    return [m for m in output_modules(trace(model, x)) if isinstance(m, nn.Module)]


def _heads(model: nn.Module) -> dict[nn.Module, int]:
    """``num_heads`` for torch-pruning: every q / k / v projection with its head count (kv heads for k / v)."""
    out = {}
    for m in model.modules():
        if all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")) and hasattr(
                m, "head_dim"):
            out[m.q_proj] = m.q_proj.out_features // m.head_dim
            out[m.k_proj] = out[m.v_proj] = m.k_proj.out_features // m.head_dim
        elif all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value")) and hasattr(
                m, "num_attention_heads"):
            for n in ("query", "key", "value"):
                out[getattr(m, n)] = m.num_attention_heads
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int):
            out[m.qkv] = m.num_heads
    return out


def _fix_attributes(model: nn.Module, pruner) -> None:
    """The examples' fix-ups: attention attributes and the config from the pruned shapes."""
    heads = getattr(pruner, "num_heads", {})
    for m in model.modules():
        if isinstance(getattr(m, "q_proj", None), nn.Linear) and m.q_proj in heads:
            m.head_dim = m.q_proj.out_features // heads[m.q_proj]
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = heads[m.q_proj] // heads[m.k_proj]
        elif isinstance(getattr(m, "query", None), nn.Linear) and m.query in heads:
            m.num_attention_heads = heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and m.qkv in heads:
            m.num_heads = heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim
        elif type(m).__name__ == "GPT2Attention":
            m.split_size = m.c_attn.weight.shape[1] // 3
            m.head_dim = m.split_size // m.num_heads
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "hidden_size"):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if isinstance(emb, nn.Embedding):
            config.hidden_size = emb.embedding_dim


def tp_prune(model: nn.Module, x, ratio: float) -> None:
    import torch_pruning as tp

    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=True, pruning_ratio=ratio, ignored_layers=_output_layers(model, x),
                                  num_heads=_heads(model))
    pruner.step()
    _fix_attributes(model, pruner)


def tp_side(model: nn.Module, x, steps: int) -> dict:
    before = params(model)
    lo, hi, best = 0.0, 0.95, None
    start = time.perf_counter()
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        tp_prune(m, x, mid)
        seconds = time.perf_counter() - t0
        reached = 1 - params(m) / before
        if best is None or abs(reached - RATIO) < abs(best[1] - RATIO):
            best = (mid, reached, m, seconds)
        if abs(reached - RATIO) < 0.01:
            break
        lo, hi = (mid, hi) if reached < RATIO else (lo, mid)
    ratio, _, pruned, seconds = best
    return {"model": pruned, "seconds": seconds, "seconds_with_search": time.perf_counter() - start,
            "channel_ratio": ratio}


def pk_side(model: nn.Module, x) -> dict:
    import prunekit as pk

    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    pk.prune(m, x, ratio=RATIO, target="params", scorer="l1_mean")
    return {"model": m, "seconds": time.perf_counter() - t0}


def one(name: str, side: str, repeat: int, steps: int) -> dict:
    """One side on one model (run in a child process)."""
    base, x = build(name)
    one_input = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    ref = shapes(base, one_input)
    got = pk_side(base, one_input) if side == "prunekit" else tp_side(base, one_input, steps)
    m = got.pop("model")
    out = shapes(m, one_input)
    if out != ref:
        raise RuntimeError(f"output shapes changed from {ref[:3]} to {out[:3]}")
    row = {"handled": True, **got, "params_removed": 1 - params(m) / params(base),
           "macs_removed": 1 - macs(m, one_input) / macs(base, one_input)}
    times = {"unpruned": [], "pruned": []}
    for _ in range(repeat):
        for k, model in (("unpruned", base), ("pruned", m)):
            t0 = time.perf_counter()
            call(model, one_input)
            times[k].append(time.perf_counter() - t0)
    row["latency_ratio_b1"] = statistics.median(times["pruned"]) / statistics.median(times["unpruned"])
    return row


def child(name: str, side: str, repeat: int, steps: int, mem_gb: float, timeout: int) -> dict:
    code = (f"import resource, sys, json; resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, "
            f"{int(mem_gb * 2**30)})); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import vs_torch_pruning_families as b; print('RESULT ' + json.dumps(b.one({name!r}, {side!r}, "
            f"{repeat}, {steps})))")
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"handled": False, "error": f"timeout: no answer in {timeout} s"}
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is not None:
        return json.loads(line[7:])
    last = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:] or [f"exit {res.returncode}"]
    if res.returncode < 0 or "MemoryError" in res.stderr:
        last = [f"MemoryError at the {mem_gb:g} GB cap ({time.perf_counter() - t0:.0f} s)"] \
            if "MemoryError" in res.stderr or res.returncode == -9 else last
    return {"handled": False, "error": last[0][:240]}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="a subset of the models (default: all)")
    p.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap of each child process")
    p.add_argument("--timeout", type=int, default=300, help="seconds each (model, side) may take")
    args = p.parse_args()
    dev = device("cpu")
    names = args.models or (["bert", "unet"] if args.quick else list(MODELS))
    repeat, steps = (5, 4) if args.quick else (15, 8)
    rows = {}
    for name in names:
        base, x = build(name)
        rows[name] = {"family": MODELS[name][2], "params": params(base)}
        for side in ("prunekit", "torch-pruning"):
            rows[name][side] = child(name, side, repeat, steps, args.mem_gb, args.timeout)
        r = rows[name]
        print(f"{name}: " + "; ".join(
            f"{s} " + (f"{r[s]['params_removed']:.3f} params, {r[s]['macs_removed']:.3f} MACs, {r[s]['seconds']:.2f} s,"
                       f" lat {r[s]['latency_ratio_b1']:.2f}" if r[s]["handled"] else r[s]["error"])
            for s in ("prunekit", "torch-pruning")), flush=True)
    write("vs_torch_pruning_families", {"ratio": RATIO, "target": "params", "repeat": repeat, "models": rows},
          args.out, dev)


if __name__ == "__main__":
    main()
