"""Distillation from a recipe (``train.distill``): an adapters run and a backbone run, each killed and resumed, end
exactly as uninterrupted ones; a checkpoint teacher; the dry run accounts for the teacher; bad teachers exit 2."""
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from prunekit.cli import main
from prunekit.models.backbone import create_backbone
from prunekit.recipe.spec import load_recipe
from prunekit.run import dry_run
from prunekit.train.resume import STATE_FILE, TEACHER_FILE
from test_backbone_run import OFFLINE, cycles_of
from test_cli import tiny_recipe
from test_resume import invoke, kill_after, read_metrics, resume_and_compare, resume_recipe, tensors_of

pytestmark = pytest.mark.integration

DISTILL = {"distill": {"teacher": "unpruned", "alpha": 0.7, "temperature": 2.0}}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distilled")
    recipe = resume_recipe(tmp)
    spec = yaml.safe_load(recipe.read_text())
    spec["train"].update(DISTILL)
    recipe.write_text(yaml.safe_dump(spec))
    res = invoke("run", recipe, "--out", tmp / "run", "--quiet")
    assert res.exit_code == 0, res.output
    return recipe, tmp / "run"


def test_the_cycles_after_a_prune_are_distilled_and_the_teacher_file_goes_at_the_end(distilled):
    _, whole = distilled
    cycles = [r for r in read_metrics(whole) if r["type"] == "cycle"]
    assert [c["distilled"] for c in cycles] == [False, True, True]
    assert (whole / "DONE").exists() and not (whole / TEACHER_FILE).exists()
    manifest = json.loads((whole / ".prunekit-run.json").read_text())
    assert TEACHER_FILE in json.dumps(manifest)  # written by the run, so it was the run's to remove


def test_distillation_changes_what_the_run_learns(distilled, tmp_path):
    recipe, whole = distilled
    plain = tmp_path / "plain"
    res = invoke("run", recipe, "--out", plain, "--quiet", "--set", "train.distill.teacher=null")
    assert res.exit_code == 0, res.output
    a, b = tensors_of(plain / "adapters" / "cycle_2.safetensors")[1], tensors_of(whole / "adapters" /
                                                                                 "cycle_2.safetensors")[1]
    assert a.keys() == b.keys() and a != b  # same plans' shapes, other weights
    assert tensors_of(plain / "adapters" / "cycle_0.safetensors")[1] == tensors_of(
        whole / "adapters" / "cycle_0.safetensors")[1]  # cycle 0 trains before the first prune: no teacher


# 3: right after cycle 0 (its prune writes the teacher); 5: in the middle of cycle 1, which the teacher teaches
@pytest.mark.parametrize("epoch_lines", [3, 5])
def test_a_killed_distilled_adapters_run_resumes_exactly(distilled, tmp_path, epoch_lines):
    recipe, whole = distilled
    out = tmp_path / "run"
    kill_after(recipe, out, epoch_lines)
    assert (out / STATE_FILE).exists()
    resume_and_compare(out, whole)
    assert not (out / TEACHER_FILE).exists()


def test_a_resume_without_the_teacher_file_is_refused_and_changes_nothing(distilled, tmp_path):
    from conftest import snapshot

    recipe, _ = distilled
    out = tmp_path / "run"
    kill_after(recipe, out, 5)
    (out / TEACHER_FILE).unlink()
    before = snapshot(out)
    res = CliRunner().invoke(main, ["run", "--resume", str(out)])
    assert res.exit_code == 2, res.output
    assert f"{TEACHER_FILE} is missing" in res.output and "Traceback" not in res.output
    assert snapshot(out) == before


def test_a_killed_distilled_backbone_run_resumes_exactly(tmp_path):
    """recipes/prune_vit_offline.yaml on random weights, distilled from its unpruned network, SIGKILLed in cycle 1."""
    spec = yaml.safe_load(OFFLINE.read_text())
    spec["model"].update(checkpoint=None, pretrain=None)
    spec["data"].update(limit_train=384, limit_val=64)
    spec["strategy"]["calibration_batches"] = 2
    spec["train"].update(epochs=2, warmup_epochs=1, max_steps_per_epoch=4, batch_size=32,
                         distill={"teacher": "unpruned", "alpha": 0.5})
    recipe = tmp_path / "backbone_distilled.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    whole = tmp_path / "whole"
    res = invoke("run", recipe, "--out", whole, "--quiet")
    assert res.exit_code == 0, res.output
    assert [c["distilled"] for c in cycles_of(whole)] == [False, True, True]
    out = tmp_path / "run"
    kill_after(recipe, out, 3)  # cycle 0's two epochs, then the first of cycle 1 (after the prune, distilled)
    assert (out / TEACHER_FILE).exists() and (out / STATE_FILE).exists()
    resume_and_compare(out, whole, folder="model")
    assert sorted(p.name for p in (out / "model").iterdir()) == [f"cycle_{k}.safetensors" for k in range(3)]


def teacher_checkpoint(tmp_path: Path, classes: int) -> Path:
    recipe = load_recipe(tiny_recipe(tmp_path))
    model = create_backbone(recipe.model, classes, pretrained=False)
    path = tmp_path / f"teacher_{classes}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_a_checkpoint_teacher_teaches_the_recovery(tmp_path):
    path = teacher_checkpoint(tmp_path, 10)
    recipe = tiny_recipe(tmp_path, train={"distill": {"teacher": str(path)}})
    res = invoke("run", recipe, "--out", tmp_path / "run", "--quiet")
    assert res.exit_code == 0, res.output
    cycles = [r for r in read_metrics(tmp_path / "run") if r["type"] == "cycle"]
    assert [c["distilled"] for c in cycles] == [False, True, True]
    assert not (tmp_path / "run" / TEACHER_FILE).exists()  # a checkpoint is rebuilt from its file, not written


@pytest.mark.parametrize("teacher, message", [
    ("nowhere.safetensors", "train.distill.teacher: 'nowhere.safetensors' is neither 'unpruned' nor an existing "
                            "checkpoint file"),
    ("CLASSES3", "holds no classifier for this task's 10 classes"),
])
def test_a_bad_teacher_exits_2_and_writes_nothing(tmp_path, teacher, message):
    if teacher == "CLASSES3":
        teacher = str(teacher_checkpoint(tmp_path, 3))
    recipe = tiny_recipe(tmp_path, train={"distill": {"teacher": teacher}})
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_the_dry_run_says_which_cycles_distil_and_times_the_teacher(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"distill": {"teacher": "unpruned", "alpha": 0.3}})
    info = dry_run(load_recipe(recipe))
    assert info["distill"] == "teacher unpruned, alpha 0.3, temperature 4: the last 2 cycles (after the first prune)"
    assert "and one teacher forward" in info["estimated_duration"]
    assert "distill" not in dry_run(load_recipe(recipe, ["train.distill.teacher=null"]), estimate=False)
