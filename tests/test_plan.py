"""What the planning commands promise is what the run does.

``--dry-run`` and ``prunekit inspect`` print the classes, parameters, cycles, epochs, steps, widths and sigmas of a
run before it starts; here the dry run and the real run (a few steps of a tiny offline ViT) of every registered
strategy and every method are compared number by number.
"""
from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

from prunekit.methods import METHODS
from prunekit.run.progress import ProgressReporter
from prunekit.recipe.spec import load_recipe
from prunekit.run import dry_run, run_recipe
from prunekit.run.estimate import FIRST_STEPS, RunClock, Workload, format_duration
from prunekit.engine.strategy import get_strategy, list_strategies
from test_cli import invoke, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

KWARGS_48 = {"patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2, "global_pool": "avg"}  # PHM: n = 12 tiles 48
SMALL = {"train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 32}, "data": {"limit_train": 80, "limit_val": 32}}
PRUNABLE = {"adapters": {"name": "adapters", "sigma": 4},
            "parallel_adapters": {"name": "parallel_adapters", "sigma": 4},
            "adaptformer": {"name": "adaptformer", "hidden": 8}}


def cases() -> list[tuple[str, str]]:
    """(method, strategy): every strategy on adapters; the other prunable methods under an iterative and a one-shot
    strategy (adaptformer has a fixed width, no sigma); every other method without pruning."""
    rows = [("adapters", s.name) for s in list_strategies()]
    rows += [(m, s) for m in PRUNABLE if m != "adapters" for s in ("tina", "vanilla_l1")]
    rows += [(m, "none") for m in sorted(METHODS.names()) if m not in PRUNABLE]
    return rows


def test_the_matrix_holds_every_prunable_method():
    assert sorted(PRUNABLE) == sorted(name for name, m in METHODS.items() if m.prunable)


def plan_and_run(path, overrides: list[str], tmp_path) -> tuple[dict, list[dict], list[dict], dict, str]:
    """The dry run's plan, the run's cycle and epoch records, its recipe.resolved.yaml and its log."""
    plan = dry_run(load_recipe(path, overrides), estimate=False)
    log = io.StringIO()
    reporter = ProgressReporter(console=Console(file=log, width=200, highlight=False))
    run_recipe(load_recipe(path, overrides), out=tmp_path / "run", reporter=reporter)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.resolved.yaml").read_text())
    return (plan, [r for r in records if r["type"] == "cycle"], [r for r in records if r["type"] == "epoch"],
            resolved, log.getvalue())


def assert_plan_is_the_run(plan: dict, cycles: list[dict], epochs: list[dict]) -> None:
    assert plan["cycles"] == len(cycles)
    assert plan["epochs_total"] == len(epochs) == plan["cycles"] * plan["epochs_per_cycle"]
    assert {e["steps"] for e in epochs} == {plan["steps_per_epoch"]}
    assert (plan["trainable_params"], plan["total_params"]) == (cycles[0]["trainable_params"],
                                                                cycles[0]["total_params"])


@pytest.mark.parametrize("method,strategy", cases())
def test_the_dry_run_is_the_run(method, strategy, tmp_path):
    section = PRUNABLE.get(method, {"name": method})
    path = tiny_recipe(tmp_path, model={"kwargs": KWARGS_48}, method=section, **SMALL,
                       strategy={"name": strategy, "sigma_target": 16} if strategy != "none" else
                       {"name": "none", "cycles": 2})
    plan, cycles, epochs, resolved, log = plan_and_run(path, [], tmp_path)
    assert_plan_is_the_run(plan, cycles, epochs)
    assert plan["steps_per_epoch"] == 3 and plan["classes"] == 10  # 80 images in batches of 32; digits
    assert "estimated total: ~" in log
    if strategy == "none":
        return
    assert plan["widths_per_cycle"] == [sum(c["widths"].values()) for c in cycles]
    assert plan["sigma_per_cycle"] == pytest.approx([c["sigma"] for c in cycles])
    assert plan["groups"] == len(cycles[0]["widths"])
    if get_strategy(strategy).mode == "oneshot":
        assert plan["sigma_reference"] == (4 if method != "adaptformer" else pytest.approx(48 / 8))
        assert resolved["resolved"]["sigma_reference"] == (4 if method != "adaptformer" else None)  # hidden: measured
    else:
        assert "sigma_reference" not in plan and resolved["resolved"]["sigma_reference"] is None


def test_one_shot_strategies_train_as_long_as_tina_by_default(tmp_path):
    """sigma_reference defaults to method.sigma: vanilla L1 to sigma 64 trains TINA's 5 cycles (from method.sigma
    4), not the 2 of the old default reference of 32; an explicit value still rules (the ablation sets it)."""
    path = tiny_recipe(tmp_path, strategy={"sigma_target": 64})
    tina = dry_run(load_recipe(path), estimate=False)
    oneshot = dry_run(load_recipe(path, ["strategy.name=vanilla_l1"]), estimate=False)
    assert oneshot["cycles"] == tina["cycles"] == 5 and oneshot["epochs_total"] == tina["epochs_total"]
    assert oneshot["widths_per_cycle"][1:] == [oneshot["widths_per_cycle"][1]] * 4  # pruned once, then fine-tuned
    set32 = dry_run(load_recipe(path, ["strategy.name=vanilla_l1", "strategy.sigma_reference=32"]), estimate=False)
    assert set32["cycles"] == 2 and set32["sigma_reference"] == 32


def test_a_one_shot_target_below_method_sigma_names_both(tmp_path):
    path = tiny_recipe(tmp_path, method={"name": "adapters", "sigma": 32}, strategy={"sigma_target": 16})
    res = invoke("run", path, "--dry-run", "--set", "strategy.name=vanilla_l1")
    assert res.exit_code == 2
    assert "strategy.sigma_target: a one-shot run trains as many cycles as an iterative run from method.sigma=32" \
        in res.output


def image_folder(root, classes=("ant", "bee", "cat"), per_class=(4, 2)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_dry_run_and_inspect_count_an_image_folders_classes_and_the_run_agrees(tmp_path):
    root = image_folder(tmp_path / "pets")
    path = tiny_recipe(tmp_path, data={"name": "imagefolder", "root": str(root), "limit_train": None,
                                       "limit_val": None}, train={"epochs": 1, "warmup_epochs": 0, "batch_size": 5})
    dry = invoke("run", path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert re.search(r"classes +3\n", dry.output) and re.search(r"train_images +12\n", dry.output)
    assert re.search(r"steps_per_epoch +3\n", dry.output) and re.search(r"estimated_duration +~", dry.output)
    inspected = invoke("inspect", path)
    assert "3 classes" in inspected.output and "classes: 3\n" in inspected.output
    plan, cycles, epochs, _, _ = plan_and_run(path, [], tmp_path)
    assert plan["val_images"] == 6
    assert_plan_is_the_run(plan, cycles, epochs)


def test_a_preview_without_the_files_says_what_it_assumed(tmp_path):
    path = tiny_recipe(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "not_here")})
    res = invoke("run", path, "--dry-run")
    assert res.exit_code == 0, res.output
    assert re.search(r"classes +1000\n", res.output) and "does not exist" in res.output
    assert "the preview assumes 1000 classes" in res.output and re.search(r"estimated_duration +unknown", res.output)
    assert "the preview assumes 1000 classes" in invoke("inspect", path).output


def test_an_image_folder_with_other_classes_in_val_fails_the_preview_as_the_run_does(tmp_path):
    root = image_folder(tmp_path / "pets")
    (root / "val" / "cow").mkdir()
    Image.new("RGB", (4, 4)).save(root / "val" / "cow" / "0.png")
    path = tiny_recipe(tmp_path, data={"name": "imagefolder", "root": str(root)})
    assert "train/ and val/ have different class folders" in invoke("run", path, "--dry-run").output
    res = invoke("run", path)
    assert res.exit_code == 2 and "train/ and val/ have different class folders" in res.output


def test_the_dry_runs_estimate_is_the_schedule_times_a_measured_step(tmp_path):
    plan = dry_run(load_recipe(tiny_recipe(tmp_path, **SMALL)))
    m = re.fullmatch(r"~(\d+) s on cpu \(an estimate: ([\d.e-]+) s per training step, 2 training steps timed on "
                     r"cpu[^)]*\)", plan["estimated_duration"])
    assert m, plan["estimated_duration"]
    assert float(m[2]) > 0 and plan["epochs_total"] * plan["steps_per_epoch"] * float(m[2]) <= int(m[1]) + 1


def test_the_run_clock_extrapolates_its_first_steps():
    log = io.StringIO()
    now = {"t": 100.0}
    clock = RunClock(Workload(cycles=4, epochs=10, steps_per_epoch=100, val_images=300), batch_size=64,
                     reporter=ProgressReporter(console=Console(file=log, width=200)), now=lambda: now["t"])
    epoch_start = 102.0  # loading and building took 2 s
    for step in range(FIRST_STEPS):
        now["t"] = epoch_start + 1.5 + 0.5 * step  # the first step takes 1.5 s (one-off costs), then 0.5 s each
        clock.on_step({"cycle": 0, "epoch": 0, "step": step, "steps": 100, "epoch_start": epoch_start,
                       "device": torch.device("cpu")})
    per_epoch = 100 * 0.5 + 300 * 0.5 / 64 / 3  # the steps, and evaluation at a third of a training image
    elapsed = now["t"] - 100.0
    assert clock.estimate_s == pytest.approx(elapsed + 40 * per_epoch - FIRST_STEPS * 0.5)
    assert f"estimated total: ~{format_duration(clock.estimate_s)} for 4 cycles x 10 epochs x 100 steps" in \
        log.getvalue()
    assert log.getvalue().count("estimated total") == 1
    clock.on_step({"cycle": 0, "epoch": 0, "step": FIRST_STEPS, "steps": 100, "epoch_start": epoch_start,
                   "device": torch.device("cpu")})
    assert log.getvalue().count("estimated total") == 1  # logged once


@pytest.mark.parametrize("seconds,text", [(42, "42 s"), (600, "10 min"), (3 * 3600, "3.0 h"),
                                          (5 * 86400, "5.0 days")])
def test_durations_read_in_the_unit_that_fits(seconds, text):
    assert format_duration(seconds) == text


def test_steps_follow_the_trainer(tmp_path):
    r = load_recipe(tiny_recipe(tmp_path, train={"batch_size": 32, "max_steps_per_epoch": 2}))
    assert Workload.steps(65, r) == 2 and Workload.steps(None, r) is None
    r = load_recipe(tiny_recipe(tmp_path, train={"batch_size": 32}))
    assert Workload.steps(65, r) == math.ceil(65 / 32)
