"""Two gloo processes through torchrun on CPU: same plan and weights on both ranks, and the same run as one process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_cli import tiny_recipe

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")]


def ddp_recipe(tmp_path: Path, distill: bool = False) -> Path:
    # 200 images in global batches of 32: the last batch (8) splits 4 + 4; TINA prunes twice (sigma 4 -> 16).
    # Distilled: every rank's teacher (its own copy of the model before the first prune) scores its own share.
    extra = {"distill": {"teacher": "unpruned", "alpha": 0.5, "temperature": 2.0}} if distill else {}
    return tiny_recipe(tmp_path, name="ddp", data={"name": "digits", "limit_train": 200, "limit_val": 128},
                       train={"epochs": 2, "warmup_epochs": 1, "batch_size": 32, "lr": 1e-2, **extra})


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=["plain", "distilled"])
def runs(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = ddp_recipe(tmp, distill=request.param == "distilled")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "prunekit", "run", str(recipe), "--out", str(tmp / "two"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([sys.executable, "-m", "prunekit", "run", str(recipe), "--out", str(tmp / "one"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    return tmp / "two", tmp / "one", two.stdout


def test_both_ranks_end_with_the_same_plan_and_weights(runs, request):
    two, _, _ = runs
    cycles = [m for m in metrics(two) if m["type"] == "cycle"]
    assert len(cycles) == 3
    distilled = request.node.callspec.params["runs"] == "distilled"
    assert [c.get("distilled") for c in cycles] == ([False, True, True] if distilled else [None] * 3)
    for c in cycles:  # digests of (weights, widths) gathered from every rank after each cycle
        assert len(c["rank_digests"]) == 2 and len(set(c["rank_digests"])) == 1, c["rank_digests"]
    plans = json.loads((two / "plan.json").read_text())["plans"]
    assert len(plans) == 2 and all(p["meta"]["cycle"] is not None for p in plans)


def test_only_rank_0_writes_and_prints(runs):
    two, _, stdout = runs
    assert stdout.count("run directory:") == 1
    assert stdout.count("| cycle |") == 1
    assert (two / "DONE").exists()
    assert not list(two.parent.glob("two-*"))


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    two, one, _ = runs
    m2, m1 = metrics(two), metrics(one)
    assert [m["type"] for m in m2] == [m["type"] for m in m1]
    for a, b in zip(m2, m1):
        if a["type"] == "epoch":  # the same batches in the same order: losses agree to float rounding
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
            assert a["steps"] == b["steps"]
        else:
            assert a["widths"] == b["widths"]
            assert a["last_top1"] == pytest.approx(b["last_top1"], abs=0.02)
    assert json.loads((two / "plan.json").read_text())["plans"] == json.loads((one / "plan.json").read_text())["plans"]
    for f in sorted((one / "adapters").iterdir()):
        w2, w1 = load_file(str(two / "adapters" / f.name)), load_file(str(f))
        assert w2.keys() == w1.keys()
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=f"{f.name}: {k}")
