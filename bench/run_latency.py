"""Batch-1 latency of every cycle of a finished run, re-measured side by side.

A run measures each cycle's latency right after that cycle trains (``latency_ms`` in ``metrics.jsonl``), minutes
apart; on a shared machine the load changes in between. This reloads every cycle's model from the run directory
(``prunekit.run.load_run``: recipe, plans, weights) and times them in interleaved rounds, so every cycle sees the
same load: per round and cycle the median of ``--repeats`` forwards, then per cycle the median and the minimum over
rounds.

    OMP_NUM_THREADS=1 python bench/run_latency.py runs/prune_vit_offline --rounds 20
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from common import RESULTS, machine
from prunekit.budget.cost import latency_ms
from prunekit.run import load_run
from prunekit.run import example_inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished prunekit run directory")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds over the cycles")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per cycle and round (after 2 warm-up)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/run_latency.json)")
    args = p.parse_args()
    cycles = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    cycles = [c["cycle"] for c in cycles if c.get("type") == "cycle"]
    models = {}
    for k in cycles:
        recipe, model, _ = load_run(args.run_dir, k)
        models[k] = model.eval()
    x = example_inputs(recipe)
    times: dict[int, list[float]] = {k: [] for k in cycles}
    for _ in range(args.rounds):
        for k, model in models.items():
            times[k].append(latency_ms(model, x, warmup=2, repeats=args.repeats))
    rows = {k: {"median_ms": statistics.median(t), "min_ms": min(t)} for k, t in times.items()}
    for k, r in rows.items():
        print(f"cycle {k}: median {r['median_ms']:.2f} ms, min {r['min_ms']:.2f} ms over {args.rounds} rounds")
    out = args.out or RESULTS / "run_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "run_latency", "machine": machine(torch.device("cpu")),
                               "run_dir": str(args.run_dir), "rounds": args.rounds, "repeats": args.repeats,
                               "cycles": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
