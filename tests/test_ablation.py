"""`prunekit ablate` on a tiny grid: table shape, parameter counts per sigma, resume, determinism of prefixes."""
import csv
import json

import pytest
import yaml
from click.testing import CliRunner

from prunekit.ablation.grid import load_ablation, plan_cells
from prunekit.cli import main
from prunekit.models.params import head_param_count
from prunekit.recipe.spec import ConfigError

from test_cli import ROOT, invoke, tiny_recipe

pytestmark = pytest.mark.integration


def write_spec(tmp_path, **grid):
    base = tiny_recipe(tmp_path, train={"epochs": 1, "warmup_epochs": 0}, data={"limit_train": 96, "limit_val": 48})
    spec = {"name": "tiny_ablation", "base": base.name,
            "grid": {"strategies": ["tina", "local_l1_oneshot"], "sigma_targets": [8, 16], "seeds": [0],
                     "sigma0": 4, "vanilla_adapters": True, **grid},
            "baselines": [{"label": "linear probe", "method": {"name": "linear"}}],
            "plots": {"local_strategy": "local_l1_oneshot", "global_strategy": "tina"}}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abl")
    spec = write_spec(tmp)
    res = invoke("ablate", spec, "--out", tmp / "out")
    assert res.exit_code == 0, res.output
    return tmp, spec, res.output


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table_shape_and_files(ablation):
    tmp, _, output = ablation
    out = tmp / "out"
    table = read_csv(out / "table.csv")
    assert [(r["row"], r["sigma_target"]) for r in table] == [
        ("vanilla_adapters", "8"), ("vanilla_adapters", "16"), ("tina", "8"), ("tina", "16"),
        ("local_l1_oneshot", "8"), ("local_l1_oneshot", "16"), ("linear probe", "nan")]
    assert all(r["n"] == "1" and 0 <= float(r["top1_mean"]) <= 1 for r in table)
    md = (out / "table.md").read_text()
    assert "| vanilla_adapters | adapters at σ, no pruning |" in md and "σ=16" in md and "± 0.00" in md
    for plot in ("top1_vs_sigma.png", "params_vs_top1.png", "neurons_local_vs_global.png"):
        assert (out / "plots" / plot).stat().st_size > 5000
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        ["tina__s16__seed0", "local_l1_oneshot__s8__seed0", "local_l1_oneshot__s16__seed0",
         "vanilla_adapters__s8__seed0", "vanilla_adapters__s16__seed0", "baseline_linear_probe__seed0"])
    assert "ablation folder" in output


def test_every_cell_has_the_parameters_of_its_sigma(ablation):
    tmp, _, _ = ablation
    head = head_param_count(32, 10)
    dim, adapters = 32, 4  # tiny ViT: 2 blocks x (attn, mlp), width 32
    for cell in read_csv(tmp / "out" / "cells.csv"):
        target = float(cell["sigma_target"])
        trainable = int(cell["trainable"])
        if cell["row"] == "linear probe":
            assert trainable == head
            continue
        if cell["row"] == "vanilla_adapters":
            n = round(dim / target)
            assert trainable == head + adapters * (2 * n * dim + n + dim)
            continue
        run = tmp / "out" / "runs" / cell["run"]
        record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"type": "cycle"' in line][int(cell["cycle"])]
        widths = record["widths"]
        assert json.loads(cell["widths"]) == widths  # cells.csv carries every adapter's width
        assert sum(widths.values()) == (adapters * dim) // target  # sigma = sum m / sum n reached exactly
        assert trainable == head + sum(2 * n * dim + n + dim for n in widths.values() if n)


def test_resume_skips_finished_cells(ablation):
    tmp, spec, _ = ablation
    runs = tmp / "out" / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    res = invoke("ablate", spec, "--out", tmp / "out")
    assert res.exit_code == 0
    assert "6 runs, 6 already finished, 0 to run" in res.output
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == stamps


def test_a_shorter_iterative_run_is_the_prefix_of_a_longer_one(ablation):
    tmp, spec, _ = ablation
    base = tmp / "tiny.yaml"
    res = invoke("run", base, "--out", tmp / "short", "--set", "strategy.sigma_target=8", "--set", "train.seed=0",
                 "--set", "strategy.sigma_reference=4", "--quiet")
    assert res.exit_code == 0, res.output
    short = [json.loads(line) for line in (tmp / "short" / "metrics.jsonl").read_text().splitlines()]
    long = [json.loads(line) for line in (tmp / "out" / "runs" / "tina__s16__seed0" / "metrics.jsonl")
            .read_text().splitlines()]
    keep = ("cycle", "widths", "sigma", "trainable_params", "best_top1", "last_top1")
    short_cycles = [{k: r[k] for k in keep} for r in short if r["type"] == "cycle"]
    long_cycles = [{k: r[k] for k in keep} for r in long if r["type"] == "cycle"]
    assert short_cycles == long_cycles[:len(short_cycles)] and len(short_cycles) == 2


def test_plan_cells_budget():
    spec = load_ablation_like(sigma_targets=[64, 512])
    cells = plan_cells(spec, rho=0.5)
    by_id = {c.run_id: c for c in cells}
    assert by_id["tina__s512__seed0"].provides == [("tina", 64, 1), ("tina", 512, 4)]
    assert by_id["local_l1_oneshot__s512__seed0"].provides == [("local_l1_oneshot", 512, 4)]
    assert "strategy.cycles=5" in by_id["vanilla_adapters__s512__seed0"].overrides


def test_oneshot_and_vanilla_rows_can_run_fewer_columns(tmp_path):
    spec = load_ablation_like(sigma_targets=[64, 128, 512], oneshot_sigma_targets=[512], vanilla_sigma_targets=[64])
    ids = {c.run_id for c in plan_cells(spec, rho=0.5)}
    assert ids == {"tina__s512__seed0", "local_l1_oneshot__s512__seed0", "vanilla_adapters__s64__seed0",
                   "baseline_linear_probe__seed0"}
    # the table leaves the cells that did not run empty, and the rows that ran keep their numbers
    from prunekit.ablation.tables import aggregate, write_tables

    def cell(row, sigma, top1):
        return {"task": "", "row": row, "sigma_target": sigma, "seed": 0, "run": "r", "cycle": 0, "epochs": 3,
                "top1": top1, "best_top1": top1, "trainable": 100, "total": 1000, "sigma": sigma, "widths": {}}

    raw = [cell("tina", 64.0, 0.9), cell("tina", 512.0, 0.8), cell("local_l1_oneshot", 512.0, 0.7),
           cell("vanilla_adapters", 64.0, 0.6)]
    rows, sigmas = ["vanilla_adapters", "tina", "local_l1_oneshot"], [64.0, 128.0, 512.0]
    agg = aggregate(raw, rows, sigmas, [], [""])
    assert {(a["row"], a["sigma_target"]) for a in agg} == {(r["row"], r["sigma_target"]) for r in raw}
    write_tables(tmp_path, spec, raw, agg, rows, sigmas, [""])
    md = (tmp_path / "table.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| local_l1_oneshot"))
    assert line.split("|")[3:6] == [" - ", " - ", " 70.00 ± 0.00 "]
    assert "nan" not in md


def load_ablation_like(**grid):
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    return load_ablation(write_spec(tmp, sigma0=32, **grid))


def test_bad_ablation_files(tmp_path):
    with pytest.raises(ConfigError, match="grid.strategies: unknown strategy 'tinna'; did you mean 'tina'"):
        load_ablation(write_spec(tmp_path, strategies=["tinna"]))
    with pytest.raises(ConfigError, match="every target must exceed grid.sigma0=4"):
        load_ablation(write_spec(tmp_path, sigma_targets=[2]))
    with pytest.raises(ConfigError, match=r"grid.oneshot_sigma_targets: expected a non-empty subset of "
                                          r"grid.sigma_targets \[8.0, 16.0\], got \[32.0\]"):
        load_ablation(write_spec(tmp_path, oneshot_sigma_targets=[32]))
    res = CliRunner().invoke(main, ["ablate", str(write_spec(tmp_path)), "--jobs", "0"])
    assert res.exit_code != 0 and "expected an integer >= 1" in res.output


SWIN_BASE = ROOT / "recipes" / "swin_offline.yaml"


def write_swin_spec(tmp_path):
    """2 cells (TINA, linear probe) x 1 seed x 2 tasks on the Swin-shaped model, random backbone, a few steps."""
    spec = {"name": "swin_tasks", "base": str(SWIN_BASE),
            "set": ["model.checkpoint=null", "model.pretrain=null", "model.allow_random_backbone=true",
                    "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16", "data.limit_val=48",
                    "output.plot=false", "output.save_state=false", f"output.dir={tmp_path / 'runs'}"],
            "tasks": [{"label": "digits", "description": "8x8 digits", "set": ["data.name=digits"]},
                      {"label": "mnist_rot_inv", "set": ["data.name=mnist5k", "data.shift=[rot90, invert]",
                                                         "data.train_size=64"]}],
            "grid": {"strategies": ["tina"], "sigma_targets": [16, 32], "seeds": [0], "sigma0": 8,
                     "vanilla_adapters": False},
            "baselines": [{"label": "linear probe", "method": {"name": "linear"}}]}
    path = tmp_path / "swin_tasks.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def swin_grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swin")
    spec = write_swin_spec(tmp)
    dry = invoke("ablate", spec, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert not (tmp / "runs").exists()  # a dry run writes nothing
    res = invoke("ablate", spec, "--jobs", 1)
    assert res.exit_code == 0, res.output
    return tmp, spec, dry.output, res.output


def test_multi_task_grid_has_rows_per_task_and_their_mean(swin_grid):
    tmp, _, dry, output = swin_grid
    assert "digits: 2 runs, 6 training epochs" in dry and "total: 12 training epochs" in dry  # 3 cycles of 1 epoch
    out = tmp / "runs" / "swin_tasks"
    table = read_csv(out / "table.csv")
    keys = [("tina", "16"), ("tina", "32"), ("linear probe", "nan")]
    assert [(r["task"], r["row"], r["sigma_target"]) for r in table] == [
        (task, row, s) for task in ("digits", "mnist_rot_inv", "mean") for row, s in keys]
    by = {(r["task"], r["row"], r["sigma_target"]): r for r in table}
    for row, s in keys:
        one, two, mean = (by[(t, row, s)] for t in ("digits", "mnist_rot_inv", "mean"))
        assert (one["n"], mean["n"]) == ("1", "2")
        assert float(mean["top1_mean"]) == pytest.approx((float(one["top1_mean"]) + float(two["top1_mean"])) / 2,
                                                         abs=1e-5)
        assert mean["top1_std"] == "0"  # one seed: no spread over seeds
        assert one["epochs"] == two["epochs"] == mean["epochs"] == ("2" if s == "16" else "3")
    cells = read_csv(out / "cells.csv")
    assert sorted((c["task"], c["run"]) for c in cells) == sorted(
        (t, f"{t}__{r}") for t in ("digits", "mnist_rot_inv") for r in ("tina__s32__seed0", "tina__s32__seed0",
                                                                        "baseline_linear_probe__seed0"))
    md = (out / "table.md").read_text()
    assert "## Mean over the 2 tasks" in md and "## Task `mnist_rot_inv`" in md and "- `digits`: 8x8 digits" in md
    for plot in ("top1_vs_sigma.png", "digits/top1_vs_sigma.png", "mnist_rot_inv/params_vs_top1.png",
                 "digits/neurons_per_stage.png", "mnist_rot_inv/neurons_local_vs_global.png"):
        assert (out / "plots" / plot).stat().st_size > 5000, plot


def test_swin_adapters_start_at_6_12_24_neurons_per_stage_and_reach_each_target(swin_grid):
    tmp, _, _, _ = swin_grid
    run = tmp / "runs" / "swin_tasks" / "runs" / "mnist_rot_inv__tina__s32__seed0"
    cycles = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"type": "cycle"' in line]
    first = cycles[0]["widths"]
    assert len(first) == 12
    for stage, n in ((0, 6), (1, 12), (2, 24)):  # widths 48 / 96 / 192 at sigma0 = 8
        assert [w for name, w in first.items() if name.startswith(f"layers.{stage}.")] == [n] * 4
    assert [sum(c["widths"].values()) for c in cycles] == [168, 84, 42]  # sigma 8, 16, 32 of m = 1344
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert resolved["data"]["shift"] == ["rot90", "invert"] and resolved["data"]["train_size"] == 64


def test_multi_task_grid_resumes(swin_grid):
    tmp, spec, _, _ = swin_grid
    res = invoke("ablate", spec)
    assert res.exit_code == 0 and "4 runs, 4 already finished, 0 to run" in res.output


def test_bad_tasks(tmp_path):
    spec = yaml.safe_load(write_swin_spec(tmp_path).read_text())
    for tasks, message in (
            ([{"label": "a b"}], r"tasks\[0\].label: expected letters, digits"),
            ([{"label": "mean"}], r"tasks\[0\].label: .*not 'mean'"),
            ([{"label": "a"}, {"label": "a"}], r"tasks: every label must be unique, \['a'\]"),
            ([{"label": "a", "sett": []}], r"tasks\[0\].sett: unknown key; did you mean 'set'")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**spec, "tasks": tasks}))
        with pytest.raises(ConfigError, match=message):
            load_ablation(path)
    path = tmp_path / "bad_data.yaml"
    path.write_text(yaml.safe_dump({**spec, "tasks": [spec["tasks"][0], {"label": "big", "set": [
        "data.name=digits", "data.train_size=99999"]}]}))
    res = CliRunner().invoke(main, ["ablate", str(path), "--dry-run"])
    assert res.exit_code == 2 and "tasks[1] (big): data.train_size: 99999 is more than" in res.output


def test_dry_run_lists_every_cell_with_an_estimate_and_writes_nothing(ablation, tmp_path):
    tmp, spec, _ = ablation
    res = invoke("ablate", spec, "--out", tmp_path / "fresh", "--dry-run", "--jobs", 2)
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line.split() for line in res.output.splitlines() if "__" in line.split()[0]}
    assert sorted(lines) == sorted(p.name for p in (tmp / "out" / "runs").iterdir())
    cycles = {run: int(cols[-7]) for run, cols in lines.items()}  # cycles x epochs x steps: 1 epoch, 96 / 32 steps
    assert cycles == {"tina__s16__seed0": 3, "local_l1_oneshot__s8__seed0": 2, "local_l1_oneshot__s16__seed0": 3,
                      "vanilla_adapters__s8__seed0": 2, "vanilla_adapters__s16__seed0": 3,
                      "baseline_linear_probe__seed0": 3}
    assert all(cols[-6:-2] == ["x", "1", "x", "3"] for cols in lines.values())
    assert "6 runs, 0 already finished" in res.output and "estimate: " in res.output and "--jobs 2" in res.output
    assert "an estimate" in res.output and "ms per training step of 32 images" in res.output
    assert not (tmp_path / "fresh").exists()
    done = invoke("ablate", spec, "--out", tmp / "out", "--dry-run").output
    assert "6 runs, 6 already finished" in done and "estimate: 0 s" in done
