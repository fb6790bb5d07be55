"""After training: load a run (or one trained file) for inference, predict image files, export, inspect, and the
metrics a run leaves besides metrics.jsonl (metrics.csv, TensorBoard)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import prunekit as pk
from prunekit.cli import main
from prunekit.io.export import export_model
from prunekit.recipe.spec import load_recipe
from prunekit.run import load_bundle, load_run

from test_cli import tiny_recipe

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

onnx_ready = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(p) is None for p in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs pip install 'prunekit[export]'")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def cycle_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "cycle"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny TINA run on digits (3 cycles, sigma 4 -> 16 -> 64: the last prune empties adapters), with TensorBoard
    scalars, and its validation images written as PNG files in val/<class>/ folders."""
    tmp = tmp_path_factory.mktemp("after")
    recipe_path = tiny_recipe(tmp, method={"name": "adapters", "sigma": 4}, strategy={"sigma_target": 64, "rho": 0.75},
                              data={"name": "digits", "limit_train": 256, "limit_val": 96},
                              train={"epochs": 2, "warmup_epochs": 0, "batch_size": 32, "lr": 1e-2},
                              output={"dir": str(tmp / "runs"), "tensorboard": True})
    res = invoke("run", recipe_path)
    assert res.exit_code == 0, res.output
    val = tmp / "val"
    bundle = load_bundle(load_recipe(recipe_path))
    for i in range(len(bundle.val)):
        image, label = bundle.val[i]
        folder = val / bundle.classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.numpy()).save(folder / f"{i:03d}.png")
    return tmp / "runs" / "tiny", val, res.output


def test_predict_on_the_validation_images_reproduces_the_recorded_top1(run):
    run_dir, val, _ = run
    records = cycle_records(run_dir)
    assert len(records) == 3 and 0 in records[-1]["widths"].values()  # adapters removed on the way
    for rec in records:
        res = pk.predict(run_dir, [val], cycle=rec["cycle"], top_k=3)
        assert res.classes == [str(d) for d in range(10)] and not res.note
        assert len(res.rows) == 96 and all(len(r.top) == 3 for r in res.rows)
        assert res.accuracy == rec["last_top1"], (rec["cycle"], res.accuracy, rec["last_top1"])


def test_load_gives_the_model_eval_rebuilds_in_eval_mode(run):
    run_dir, _, _ = run
    model = pk.load(run_dir)
    _, reference, _ = load_run(run_dir)
    assert not model.training
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)


def test_one_trained_file_loads_without_its_run_directory(run, tmp_path):
    run_dir, val, _ = run
    last = cycle_records(run_dir)[-1]
    alone = tmp_path / "task.safetensors"  # the per-task file, copied away from its run directory
    shutil.copy(run_dir / last["adapter_file"], alone)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pk.load(alone)(x), pk.load(run_dir)(x), rtol=0, atol=0)
    assert pk.predict(alone, [val]).accuracy == last["last_top1"]  # classes and the transform come with the file
    with pytest.raises(pk.PrunekitError, match="holds one cycle"):
        pk.load(alone, cycle=0)


def test_a_moved_backbone_checkpoint_is_named_and_backbone_replaces_it(tmp_path):
    import timm
    from safetensors.torch import save_file

    from test_cli import TINY_MODEL

    backbone = tmp_path / "backbone.safetensors"
    save_file(timm.create_model(TINY_MODEL["name"], img_size=16, num_classes=10, **TINY_MODEL["kwargs"]).state_dict(),
              str(backbone))
    recipe = tiny_recipe(tmp_path, model={"checkpoint": str(backbone), "allow_random_backbone": False},
                         strategy={"name": "none"}, data={"name": "digits", "limit_train": 64, "limit_val": 32},
                         train={"epochs": 1, "warmup_epochs": 0})
    assert invoke("run", recipe).exit_code == 0
    run_dir = tmp_path / "runs" / "tiny"
    x = torch.randn(2, 3, 16, 16)
    before = pk.load(run_dir)(x)
    moved = backbone.rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(pk.PrunekitError, match=r"backbone checkpoint .* does not exist on this machine; pass the "
                                               r"backbone file"):
        pk.load(run_dir)
    torch.testing.assert_close(pk.load(run_dir, backbone=moved)(x), before, rtol=0, atol=0)
    trained = run_dir / "adapters" / "cycle_0.safetensors"
    torch.testing.assert_close(pk.load(trained, backbone=moved)(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=onnx_ready)])
def test_the_loaded_model_exports_within_1e4(run, tmp_path, fmt):
    run_dir, _, _ = run
    info = export_model(pk.load(run_dir), torch.zeros(2, 3, 16, 16), tmp_path / f"m.{fmt}", format=fmt)
    assert info["max_abs_diff"] <= 1e-4 and info["parity_batch"] == 4


def test_predict_command_prints_named_classes_and_the_accuracy(run):
    run_dir, val, _ = run
    one = sorted((val / "3").iterdir())[0]
    res = invoke("predict", run_dir, one, val / "7", "--top-k", 2)
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith(str(one)) and first.count("%") == 2
    assert "top-1 against the folder names" in res.output  # every image sits in a folder named after a class


def test_a_run_without_class_names_shows_indices_with_a_note(run, tmp_path):
    run_dir, val, _ = run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "classes.json").unlink()  # as a run from before prunekit stored class names
    res = invoke("predict", old, sorted((val / "5").iterdir())[0], "--top-k", 1)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("note: ") and "no classes.json" in res.output and "label indices" in res.output
    assert "top-1 against" not in res.output


@pytest.mark.parametrize("args,message", [
    (["{run}", "missing.png"], "missing.png: no such image file or folder"),
    (["{run}", "{text}"], "not a readable image"),
    (["{run}", "{empty}"], "no image files inside"),
    (["{run}", "{png}", "--top-k", "0"], "--top-k: expected an integer >= 1, got 0"),
    (["{run}", "{png}", "--cycle", "9"], "--cycle: 9 not recorded"),
])
def test_predict_refuses_bad_input_by_name(run, tmp_path, args, message):
    run_dir, val, _ = run
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty").mkdir()
    png = sorted((val / "1").iterdir())[0]
    subs = {"run": run_dir, "text": tmp_path / "notes.png", "empty": tmp_path / "empty", "png": png}
    res = CliRunner().invoke(main, ["predict", *[a.format(**{k: str(v) for k, v in subs.items()}) for a in args]])
    assert res.exit_code == 2 and message in res.output, res.output


def test_metrics_csv_has_a_row_per_cycle_and_is_in_the_manifest(run):
    run_dir, _, _ = run
    import csv

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    records = cycle_records(run_dir)
    assert [int(r["cycle"]) for r in rows] == [c["cycle"] for c in records]
    for row, rec in zip(rows, records):
        assert float(row["last_top1"]) == rec["last_top1"] and int(row["trainable_params"]) == rec["trainable_params"]
        assert int(row["neurons"]) == sum(rec["widths"].values())
        assert int(row["adapters"]) == sum(1 for w in rec["widths"].values() if w)
    manifest = json.loads((run_dir / ".prunekit-run.json").read_text())["files"]
    assert {"metrics.csv", "classes.json"} <= set(manifest)


def test_tensorboard_scalars_are_written_and_listed(run):
    run_dir, _, _ = run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").iterdir())
    manifest = json.loads((run_dir / ".prunekit-run.json").read_text())["files"]
    assert events and all(f"tensorboard/{e.name}" in manifest for e in events)
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/val_acc", "epoch/lr", "cycle/last_top1", "cycle/trainable_params"} <= tags
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [1, 2, 3, 4, 5, 6]  # 3 cycles x 2 epochs
    last = cycle_records(run_dir)[-1]
    assert acc.Scalars("cycle/last_top1")[-1].value == pytest.approx(last["last_top1"])


def test_tensorboard_without_the_package_is_a_named_error_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    res = CliRunner().invoke(main, ["run", str(tiny_recipe(tmp_path)), "--set", "output.tensorboard=true"])
    assert res.exit_code == 2
    assert "output.tensorboard: true needs the tensorboard package" in res.output
    assert "pip install 'prunekit[tensorboard]'" in res.output and not (tmp_path / "runs").exists()


def test_inspect_a_finished_run(run):
    run_dir, _, _ = run
    res = invoke("inspect", run_dir)
    assert res.exit_code == 0, res.output
    records = cycle_records(run_dir)
    assert "strategy tina" in res.output and "3 cycles recorded, finished" in res.output
    assert "blocks.0.attn" in res.output and "last top-1" in res.output
    for before, rec in zip(records, records[1:]):
        gone = [k for k, w in rec["widths"].items() if not w and before["widths"][k]]
        if gone:
            assert f"removed before cycle {rec['cycle']}: {len(gone)} adapter{'s' if len(gone) > 1 else ''} (" \
                in res.output
    assert f"{100 * records[-1]['last_top1']:.2f}" in res.output
    assert "--set" in CliRunner().invoke(main, ["inspect", str(run_dir), "--set", "train.lr=1"]).output


def test_the_run_says_what_it_did_in_words(run):
    _, _, output = run
    assert "DataBundle(" not in output and "digits (256 training / 96 validation images, 10 classes)" in output
    assert "3 cycles of 2 epochs" in output and "cycle 2 of 0..2" in output
    assert "removed 1 adapters" not in output and "pruned 24 neurons -> sigma 16.0" in output


def test_a_one_cycle_run_says_training_and_its_report_says_no_pruning(tmp_path):
    recipe = tiny_recipe(tmp_path, strategy={"name": "none"}, train={"epochs": 1, "warmup_epochs": 0},
                         data={"name": "digits", "limit_train": 64, "limit_val": 32})
    res = invoke("run", recipe)
    assert "training trainable" in res.output and "cycle 0/0" not in res.output
    report = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert "- strategy: `none` (no pruning), 1 cycle" in report and "rho=" not in report
    assert "1 epoch per cycle" in report


def test_overridden_data_changes_the_description_title_and_report(tmp_path):
    folder = tmp_path / "pics"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cats", "dogs"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / cls / f"{i}.jpg")
    recipe = tiny_recipe(tmp_path, strategy={"name": "none"}, train={"epochs": 1, "warmup_epochs": 0, "batch_size": 4},
                         description="TINA from MNIST to digits")
    res = invoke("run", recipe, "--set", "data.name=imagefolder", "--set", f"data.root={folder}",
                 "--set", "output.run_name=pets")
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "pets"
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# pets (tiny recipe)") and "MNIST" not in report
    assert "tiny.yaml run with --set data.name=imagefolder" in report and f"`imagefolder` from `{folder}`" in report
    assert json.loads((run_dir / "classes.json").read_text())["classes"] == ["cats", "dogs"]
    res = pk.predict(run_dir, [folder / "val"])
    assert res.classes == ["cats", "dogs"] and res.accuracy == cycle_records(run_dir)[-1]["last_top1"]


def test_list_shows_strategy_none_and_image_folders_of_any_format():
    strategies = invoke("list", "strategies").output.splitlines()
    assert any(line.split()[0] == "none" and "prunes nothing" in line for line in strategies)
    folder = next(line for line in invoke("list", "datasets").output.splitlines() if line.startswith("imagefolder"))
    assert "*.jpg" not in folder and "any image format PIL reads" in folder


def test_the_live_bar_labels_its_columns():
    import io

    from rich.console import Console

    from prunekit.run.progress import ProgressReporter

    buf = io.StringIO()
    reporter = ProgressReporter(console=Console(file=buf, force_terminal=True, width=160, color_system=None))
    reporter.start_cycle(1, 4)
    reporter.start_epoch(0, 2, 10)
    reporter.step(0.5, 0.8, 100.0)
    reporter.end_epoch({"cycle": 1, "epoch": 0, "train_loss": 0.5, "train_acc": 0.8, "val_acc": 0.7, "lr": 1e-3,
                        "images_per_s": 100, "epoch_time_s": 1.0})
    out = buf.getvalue()
    assert "cycle 1 of 0..3" in out
    assert "step  1/10 loss 0.5000  train acc 80.0%  100 img/s  elapsed 0:00:0" in out and " ETA " in out
