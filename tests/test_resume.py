"""Kill a run with SIGKILL, resume it, and get exactly what an uninterrupted run gets (CPU, deterministic)."""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunekit.cli import main
from prunekit.train.resume import STATE_FILE
from test_cli import tiny_recipe, tree_digest

pytestmark = pytest.mark.integration

EPOCHS = 3
TIMING_KEYS = {"images_per_s", "epoch_time_s", "latency_ms", "wall_s"}  # measured, so they differ between runs


def resume_recipe(tmp_path: Path, **sections) -> Path:
    # 3 cycles x 3 epochs on 768 of scikit-learn's digits: a few seconds, long enough to be killed mid-run.
    return tiny_recipe(tmp_path, name="resumable", data={"name": "digits", "limit_train": 768, "limit_val": 256},
                       train={"epochs": EPOCHS, "warmup_epochs": 1, "batch_size": 32, "lr": 1e-2}, **sections)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def tensors_of(path: Path) -> tuple[dict, dict]:
    """Metadata and tensor bytes of a .safetensors file (its header's key order is not deterministic)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: (tuple(f.get_tensor(k).shape), f.get_tensor(k).numpy().tobytes()) for k in f.keys()}


def kill_after(recipe: Path, out: Path, epoch_lines: int) -> None:
    """Start ``prunekit run`` in a subprocess and SIGKILL it once ``epoch_lines`` epochs are logged."""
    proc = subprocess.Popen([sys.executable, "-m", "prunekit", "run", str(recipe), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum('"type": "epoch"' in line for line in metrics.read_text().splitlines()) \
                >= epoch_lines:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {proc.stderr.read().decode()}"
    assert not (out / "DONE").exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    recipe = resume_recipe(tmp)
    res = invoke("run", recipe, "--out", tmp / "run", "--quiet")
    assert res.exit_code == 0, res.output
    return recipe, tmp / "run"


# 2: in the middle of cycle 0;  3: right after cycle 0's last epoch (cycle summary, adapter file, prune, cycle 1);
# 5: in the middle of cycle 1, after a prune.
@pytest.mark.parametrize("epoch_lines", [2, 3, 5])
def test_sigkill_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, epoch_lines):
    recipe, whole = uninterrupted
    out = tmp_path / "run"
    kill_after(recipe, out, epoch_lines)
    assert (out / STATE_FILE).exists()

    resume_and_compare(out, whole)


def resume_and_compare(out: Path, whole: Path, folder: str = "adapters") -> None:
    """``prunekit run --resume out`` finishes it as the uninterrupted run ``whole`` finished: the same log lines,
    widths and plans, and every cycle's trained file (in ``folder``) bit for bit."""
    res = invoke("run", "--resume", out)
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output
    assert (out / "DONE").exists() and not (out / STATE_FILE).exists()

    got, want = read_metrics(out), read_metrics(whole)
    assert [r["type"] for r in got] == [r["type"] for r in want]  # nothing logged twice, nothing missing
    assert comparable(got) == comparable(want)
    cycles = [r for r in got if r["type"] == "cycle"]
    assert [c["widths"] for c in cycles] == [c["widths"] for c in (r for r in want if r["type"] == "cycle")]
    assert json.loads((out / "plan.json").read_text()) == json.loads((whole / "plan.json").read_text())
    names = sorted(p.name for p in (whole / folder).iterdir())
    assert sorted(p.name for p in (out / folder).iterdir()) == names
    for f in (whole / folder).iterdir():  # trained weights of every cycle, bit for bit
        assert tensors_of(out / folder / f.name) == tensors_of(f), f.name


def test_resume_then_eval_reproduces_the_recorded_accuracy(uninterrupted, tmp_path):
    recipe, _ = uninterrupted
    out = tmp_path / "run"
    kill_after(recipe, out, 4)
    assert invoke("run", "--resume", out).exit_code == 0
    res = invoke("eval", out, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["match"] is True


def test_resume_of_a_finished_run_changes_nothing(uninterrupted):
    _, whole = uninterrupted
    before = tree_digest(whole)
    res = invoke("run", "--resume", whole)
    assert res.exit_code == 0
    assert "already finished" in res.output
    assert tree_digest(whole) == before


def test_resume_refuses_a_recipe_or_overrides(uninterrupted):
    recipe, whole = uninterrupted
    res = CliRunner().invoke(main, ["run", "--resume", str(whole), "--set", "train.lr=1"])
    assert res.exit_code == 2
    assert "--resume" in res.output and "--set" in res.output


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    res = CliRunner().invoke(main, ["run", "--resume", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a prunekit run directory" in res.output


def test_a_finished_run_is_not_overwritten_without_overwrite(uninterrupted):
    recipe, whole = uninterrupted
    before = tree_digest(whole)
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(whole)])
    assert res.exit_code == 2
    assert "already holds a finished run" in res.output and "--overwrite" in res.output
    assert tree_digest(whole) == before


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import torch

    from prunekit.train.resume import load_state
    from prunekit.train.trainer import Trainer

    original = Trainer.train_epoch

    def poisoned(self, model, optimizer, scheduler, cycle, epoch, steps, *rest):
        if epoch == 1:  # a weight turns NaN after the first epoch, as a diverging run's would
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
        return original(self, model, optimizer, scheduler, cycle, epoch, steps, *rest)

    monkeypatch.setattr(Trainer, "train_epoch", poisoned)
    recipe = resume_recipe(tmp_path)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "loss is nan at cycle 0, epoch 2, step 1" in res.output
    assert not (out / "DONE").exists()
    epochs = [r for r in read_metrics(out) if r["type"] == "epoch"]
    assert len(epochs) == 1 and math.isfinite(epochs[0]["train_loss"])
    state = load_state(out / STATE_FILE)  # the last good state: after epoch 1, every weight finite
    assert state["trainer"]["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["model"].values())
