"""Run every benchmark and write docs/benchmarks.md from their JSON results.

    python bench/run_all.py                 # CPU, about 10 minutes on 2 cores
    python bench/run_all.py --device cuda   # the GPU variant
    python bench/run_all.py --report-only   # rewrite docs/benchmarks.md from bench/results/*.json
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["train_throughput.py", "prune_overhead.py", "inference.py", "train_cost.py", "storage.py",
           "vs_torch_pruning.py", "cli_startup.py", "load_time.py", "export_latency.py",
           "tasks.py"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks the scripts run; figures meaningless)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    results = HERE / ("results-quick" if args.quick else "results")
    if not args.report_only:
        for script in SCRIPTS:
            t0 = time.perf_counter()
            out = (results / script.replace(".py", ".json")).relative_to(HERE)
            cmd = [sys.executable, str(HERE / script), "--device", args.device, "--out", str(out)] + (
                ["--quick"] if args.quick else [])
            print(f"$ {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, cwd=HERE)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not args.quick:
        from report import write_report

        print(f"wrote {write_report(results)}")


if __name__ == "__main__":
    main()
