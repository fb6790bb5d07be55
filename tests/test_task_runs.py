"""Many tasks, one backbone, from real trained runs: ``prunekit.load_tasks`` equals ``prunekit.load`` per sample for
three runs of different widths and classes (one with emptied adapters), refuses what it cannot share (another
backbone checkpoint, a LoRA run, a taken name) naming both runs and changing nothing, and ``prunekit predict
--task`` writes one table for several tasks."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import prunekit as pk
from prunekit.cli import main

from task_runs import make_task_runs

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory):
    return make_task_runs(tmp_path_factory.mktemp("tasks"))


def test_three_runs_share_one_backbone_and_a_mixed_batch_equals_each_run_alone(task_runs):
    runs = task_runs.runs
    model = pk.load_tasks(list(runs.values()))
    assert model.tasks == ["full", "half", "emptied"]
    w = {name: run.widths for name, run in model.runs.items()}
    assert len(w["full"]) == 4 and set(w["full"].values()) == {8}, w["full"]
    assert set(w["half"]) == set(w["full"]) and w["half"] != w["full"], w["half"]
    assert len(w["emptied"]) < 4, w["emptied"]  # adapters pruned to zero are gone
    backbone_tensors = sum(p.numel() for p in model.backbone.parameters())
    single = {name: pk.load(path).eval() for name, path in runs.items()}
    assert backbone_tensors < sum(p.numel() for p in single["full"].parameters())  # one backbone, heads apart

    x = torch.randn(9, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tasks = ["full", "half", "emptied", "emptied", "full", "half", "half", "emptied", "full"]
    out = model(x, tasks=tasks)
    classes = {"full": 10, "half": 3, "emptied": 5}
    with torch.no_grad():
        for b, t in enumerate(tasks):
            alone = single[t](x[b:b + 1])[0]
            assert out[b].shape == (classes[t],)
            torch.testing.assert_close(out[b], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x, tasks="half"), single["half"](x), rtol=1e-5, atol=1e-5)
    names = [top[0][1] for top in out.top_k(1)]
    assert names[1] in {"0", "1", "2"} and names[2] in {"3", "4", "5", "6", "7"}, names


def test_a_run_on_another_backbone_is_refused_naming_both_and_nothing_changes(task_runs):
    runs = task_runs.runs
    with pytest.raises(pk.PrunekitError, match=r"other: trained on another backbone than .*full: weights sha256:\w+ "
                                               r"\(.*backbone.safetensors\) in .*full, sha256:\w+ \(.*other"
                                               r".safetensors\) in .*other"):
        pk.load_tasks([runs["full"], task_runs.other])
    model = pk.load_tasks({"a": runs["full"], "b": runs["half"]})
    x = torch.randn(4, 3, 16, 16)
    before = model(x, tasks=["a", "b", "a", "b"]).padded.clone()
    with pytest.raises(pk.PrunekitError, match="trained on another backbone"):
        model.add_task(task_runs.other)
    with pytest.raises(pk.PrunekitError, match=r"lora.*adapters"):
        model.add_task(task_runs.lora)
    with pytest.raises(pk.PrunekitError, match=r"the name 'a' is taken"):
        model.add_task(runs["emptied"], name="a")
    assert model.tasks == ["a", "b"]
    torch.testing.assert_close(model(x, tasks=["a", "b", "a", "b"]).padded, before, rtol=0, atol=0)
    with pytest.raises(pk.PrunekitError, match="two runs are named 'full'"):
        pk.load_tasks([runs["full"], runs["full"]])


def test_trained_files_attach_and_a_task_comes_and_goes_without_touching_the_others(task_runs):
    runs = task_runs.runs
    trained = sorted((runs["emptied"] / "adapters").glob("cycle_*.safetensors"))[-1]
    model = pk.load_tasks({"full": runs["full"], "late": trained})
    x = torch.randn(3, 3, 16, 16)
    full = model(x, tasks="full").clone()
    torch.testing.assert_close(model(x, tasks="late"), pk.load(trained)(x), rtol=1e-5, atol=1e-5)
    model.add_task(runs["half"])
    model.remove_task("late")
    torch.testing.assert_close(model(x, tasks="full"), full, rtol=0, atol=0)
    assert model.tasks == ["full", "half"]


def test_predict_with_several_tasks_writes_one_table(task_runs, tmp_path):
    runs, images = task_runs.runs, task_runs.images
    table = tmp_path / "table.csv"
    res = CliRunner().invoke(main, ["predict", "--task", f"digits={runs['full']}", "--task", f"low={runs['half']}",
                                    f"digits={images}", f"low={images / '1'}", "--top-k", "2", "--out", str(table)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(table.open()))
    n_all, n_ones = len(list(images.rglob("*.png"))), len(list((images / "1").glob("*.png")))
    assert [r["task"] for r in rows] == ["digits"] * n_all + ["low"] * n_ones
    assert all(r["top2"] for r in rows) and {r["top1"] for r in rows if r["task"] == "low"} <= {"0", "1", "2"}
    assert re.search(rf"^digits: {n_all} images \(.*full\); top-1 against the folder names: [\d.]+%$", res.output,
                     re.M), res.output
    single = pk.predict(runs["full"], [images], top_k=2)
    assert [r.top[0][1] for r in single.rows] == [r["top1"] for r in rows if r["task"] == "digits"]
    bad = CliRunner().invoke(main, ["predict", "--task", f"digits={runs['full']}", f"digts={images}"])
    assert bad.exit_code == 2 and "did you mean 'digits'" in bad.output, bad.output


def test_load_tasks_in_a_new_process(task_runs):
    code = ("import prunekit as pk, torch, sys; m = pk.load_tasks(sys.argv[1:]); x = torch.zeros(2, 3, 16, 16); "
            "print(m(x, tasks=['half', 'emptied']).classes)")
    out = subprocess.run([sys.executable, "-c", code, str(task_runs.runs["half"]), str(task_runs.runs["emptied"])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[3, 5]"
