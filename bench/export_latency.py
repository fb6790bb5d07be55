"""Latency of one model as PyTorch eager, TorchScript, ``torch.export`` and ONNX Runtime, pruned and unpruned.

For each model: the unpruned one and a copy with 50 % of its MACs pruned (``pk.prune(target="macs")``), each exported
with ``pk.export`` in every format (which also checks the file against PyTorch); then every (model, runtime) pair is
timed in interleaved rounds (round r times every pair once, so drift of a shared machine hits all of them alike):
a forward of one batch, median over the rounds. The same thread count everywhere (``torch.set_num_threads`` and
ONNX Runtime's ``intra_op_num_threads``).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import timm
import torch

from common import device, interleaved, parser, write
import prunekit as pk


def runtimes(model: torch.nn.Module, x: torch.Tensor, folder: Path, tag: str, threads: int) -> dict:
    """runtime name -> callable on a batch, after exporting ``model`` to each format."""
    import onnxruntime as ort

    out = {"eager": lambda b: model(b)}
    pk.export(model, x[:2], folder / f"{tag}.pt", format="torchscript")
    script = torch.jit.load(str(folder / f"{tag}.pt"))
    out["torchscript"] = lambda b: script(b)
    pk.export(model, x[:2], folder / f"{tag}.pt2", format="torch_export")
    program = torch.export.load(str(folder / f"{tag}.pt2")).module()
    out["torch.export"] = lambda b: program(b)
    pk.export(model, x[:2], folder / f"{tag}.onnx", format="onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(folder / f"{tag}.onnx"), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out["onnxruntime"] = lambda b: session.run(None, {name: b.numpy()})
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    dev = device(args.device)
    torch.set_num_threads(args.threads)
    models = [("resnet18", 64)] if args.quick else [("resnet50", 224), ("vit_small_patch16_224", 224)]
    rounds = 2 if args.quick else 15
    rows = {}
    for name, size in models:
        torch.manual_seed(0)
        dense = timm.create_model(name, num_classes=1000).eval()
        x = torch.randn(args.batch, 3, size, size)
        pruned = copy.deepcopy(dense)
        plan = pk.prune(pruned, x[:1], ratio=0.5, target="macs")
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            pairs = {}
            for tag, m in (("unpruned", dense), ("pruned", pruned)):
                for rt, fn in runtimes(m, x, Path(tmp), tag, args.threads).items():
                    pairs[(tag, rt)] = lambda fn=fn, x=x: fn(x)
            med = {k: 1000 * s for k, s in interleaved(pairs, rounds).items()}
        rows[name] = {"input": [args.batch, 3, size, size], "macs_removed": round(plan.meta["reached"], 4),
                      "params": {"unpruned": plan.meta["params_before"], "pruned": plan.meta["params_after"]},
                      "ms": {f"{tag}/{rt}": round(v, 2) for (tag, rt), v in med.items()},
                      "speedup_vs_unpruned_eager": {f"{tag}/{rt}": round(med[("unpruned", "eager")] / v, 2)
                                                    for (tag, rt), v in med.items()}}
    write("export_latency", {"models": rows, "rounds": rounds, "threads": args.threads, "batch": args.batch,
                             "table": table(rows)}, args.out, dev)


def table(rows: dict) -> str:
    runtimes_ = ["eager", "torchscript", "torch.export", "onnxruntime"]
    lines = ["| model | " + " | ".join(f"{r} (ms)" for r in runtimes_) + " |", "|---|" + "---:|" * len(runtimes_)]
    for name, r in rows.items():
        for tag in ("unpruned", "pruned"):
            cells = [f"{r['ms'][f'{tag}/{rt}']:.1f}" for rt in runtimes_]
            lines.append(f"| {name} {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
