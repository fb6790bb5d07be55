"""The benchmark scripts run (tiny sizes); their figures live in docs/benchmarks.md, not in tests."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script,keys", [
    ("train_throughput.py", {"images_per_s", "ratio", "met"}),
    ("prune_overhead.py", {"scenarios"}),
    ("storage.py", {"scenarios"}),
    ("inference.py", {"scenarios"}),
    ("vs_torch_pruning.py", {"models", "big_batch"}),
    ("swin_offline_cost.py", {"methods", "grid_hours", "task_sizes"}),
    ("cli_startup.py", {"rows", "met"}),
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
