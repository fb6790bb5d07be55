"""The benchmark scripts run (tiny sizes); their figures live in docs/benchmarks.md, not in tests."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script,keys", [
    ("train_throughput.py", {"images_per_s", "ratio", "met"}),
    ("prune_overhead.py", {"scenarios"}),
    ("storage.py", {"scenarios"}),
    ("inference.py", {"scenarios"}),
    ("vs_torch_pruning.py", {"models", "big_batch"}),
    ("vs_torch_pruning_families.py", {"models", "ratio"}),
    ("swin_offline_cost.py", {"methods", "grid_hours", "task_sizes"}),
    ("cli_startup.py", {"rows", "met"}),
    ("load_time.py", {"models", "met"}),
    ("export_latency.py", {"models", "table"}),
    ("tasks.py", {"memory", "throughput", "serving", "table"}),
])
def test_bench_script_runs_and_writes_json(script, keys, tmp_path):
    out = tmp_path / "result.json"
    res = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, cwd=BENCH, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert keys <= set(data) and data["machine"]["cores"] >= 1 and data["command"].startswith(script)
    if script == "cli_startup.py":  # the timed commands did what they are timed for (the schema error exits 2)
        codes = {name: r["exit_code"] for name, r in data["rows"].items()}
        assert codes.pop("prunekit run BAD.yaml (schema error)") == 2 and set(codes.values()) == {0}
    if script == "load_time.py":  # every way of loading gave the pruned model back
        assert all(r["same_outputs"] for r in data["models"].values())
    if script == "tasks.py":  # mixed batches gave each task's own outputs, and the server answered every upload
        assert all(r["max_abs_diff"] < 1e-4 for r in data["throughput"])
        assert all(r["batching"]["requests_per_s"] > 0 and r["no_batching"]["mean_batch"] == 1
                   for r in data["serving"])


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("script,keys,extra", [
    ("recovery.py", {"summary", "table", "verdicts", "runs"}, ["--budgets", "0.5", "0.875"]),
    ("latency_budget.py", {"rows", "table"}, ["--archs", "resnet18"]),
])
def test_the_fashion_mnist_benchmarks_run(script, keys, extra, tmp_path):
    """Recovery (criteria, distillation, torch-pruning, ModelOpt where installed) and the latency budget, tiny."""
    out = tmp_path / "result.json"
    res = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra],
                         capture_output=True, text=True, cwd=BENCH, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert keys <= set(data)
    if script == "recovery.py":
        rows = {s["row"] for s in data["summary"]}
        assert {"unpruned", "prunekit_l1_mean", "prunekit_l1_mean+kd", "tp_taylor", "random"} <= rows
        assert all(0.0 <= s["top1"] <= 1.0 for s in data["summary"]) and len(data["verdicts"]) == 2
    else:
        assert {r["budget"] for r in data["rows"]} == {"latency", "macs"}


def test_ablation_claims_pairs_cells_by_task_and_seed(tmp_path):
    """bench/ablation_claims.py: per-(task, seed) differences, the verdict rule, unequal sigma never judged."""
    sys.path.insert(0, str(BENCH))
    try:
        import ablation_claims as ac
    finally:
        sys.path.remove(str(BENCH))

    def row(task, name, seed, top1, sigma="64", widths='{"layers.0.a": 1}'):
        return {"task": task, "row": name, "sigma_target": "64", "seed": str(seed), "run": "r", "cycle": "1",
                "epochs": "6", "top1": str(top1), "best_top1": str(top1), "trainable": "100", "total": "1000",
                "sigma": sigma, "widths": widths}

    rows = []
    for task in ("a", "b", "c"):
        for seed in range(3):
            rows += [row(task, "tina", seed, 0.90), row(task, "local_l1", seed, 0.89 if seed else 0.91),
                     row(task, "vanilla_adapters", seed, 0.80, sigma="", widths="{}")]
    path = tmp_path / "cells.csv"
    with open(path, "w", newline="") as f:
        import csv
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cells = ac.index(ac.read(str(path)))
    p = ac.paired(cells, "tina", "local_l1", 64.0)
    assert p["n"] == 9 and p["wins"] == 6 and abs(p["mean"] - 100 * 0.01 / 3) < 1e-9
    assert ac.verdict(p, True) == "no consistent difference"  # 6 of 9 pairs: below the rule's 7
    q = ac.paired(cells, "tina", "vanilla_adapters", 64.0)
    assert q["wins"] == 9 and ac.verdict(q, True) == "held" and ac.verdict(q, False) == "not judged (unequal σ)"
    table = "\n".join(ac.claims(ac.read(str(path))))
    assert "tina − vanilla_adapters | 64 | +10.00 ± 0.00 | 9 of 9" in table and "**unequal**" in table
