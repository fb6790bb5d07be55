"""The command line end to end on tiny offline runs."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from prunekit.cli import main
from prunekit.adapters.groups import adapter_groups
from prunekit.core.plan import Plan
from prunekit.engine.sources import replay
from prunekit.recipe.spec import load_recipe
from prunekit.run import build_model, example_inputs, load_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "vit_tiny_patch16_224", "img_size": 16, "allow_random_backbone": True,  # no weights offline
              "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "avg"}}


def tiny_recipe(tmp_path, **sections) -> Path:
    r = {"name": "tiny", "model": dict(TINY_MODEL), "method": {"name": "adapters", "sigma": 4},
         "strategy": {"name": "tina", "rho": 0.5, "sigma_target": 16},
         "data": {"name": "digits", "limit_train": 384, "limit_val": 128},
         "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 32, "lr": 1e-2},
         "output": {"dir": str(tmp_path / "runs")}}
    for k, v in sections.items():  # sections merge into the defaults; a method replaces the default one
        r[k] = {**r.get(k, {}), **v} if isinstance(v, dict) and k != "method" else v
    p = tmp_path / f"{r['name']}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    recipe = tiny_recipe(tmp)
    res = invoke("run", recipe, "--set", "train.seed=3")
    assert res.exit_code == 0, res.output
    return recipe, tmp / "runs" / "tiny", res.output


def test_run_writes_a_complete_run_directory(finished_run):
    recipe, run_dir, output = finished_run
    for name in ("recipe.resolved.yaml", "metrics.jsonl", "plan.json", "report.md", "DONE",
                 "plots/neurons_per_adapter.png", "adapters/cycle_0.safetensors", "adapters/cycle_2.safetensors"):
        assert (run_dir / name).is_file(), name
    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["train"]["seed"] == 3  # the --set override is what ran
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cycles = [m for m in metrics if m["type"] == "cycle"]
    assert [c["cycle"] for c in cycles] == [0, 1, 2]
    assert [c["sigma"] for c in cycles] == [4.0, 8.0, 16.0]
    assert len([m for m in metrics if m["type"] == "epoch"]) == 6
    assert cycles[0]["trainable_params"] > cycles[-1]["trainable_params"]
    assert all(0 <= c["last_top1"] <= 1 for c in cycles)
    assert len(Plan.load_all(run_dir / "plan.json")) == 2
    report = (run_dir / "report.md").read_text()
    assert "| cycle | sigma |" in report and "% of total" in report
    assert "| MACs | latency (ms) |" in report and "wall (s)" in report
    for c in cycles:  # every cycle's cost: the adapters' MACs shrink with them, the backbone's stay
        assert c["macs"] > 0 and c["latency_ms"] > 0 and c["wall_s"] > 0 and c["pruned"] == "adapters"
    assert cycles[0]["macs"] > cycles[-1]["macs"]
    assert "| 2 | 16.0 |" in output  # the per-cycle table is printed at the end


def test_eval_reproduces_every_cycle(finished_run):
    _, run_dir, _ = finished_run
    recorded = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for cycle in (0, 2):
        res = invoke("eval", run_dir, "--cycle", cycle, "--json")
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        expected = next(m["last_top1"] for m in recorded if m["type"] == "cycle" and m["cycle"] == cycle)
        assert out["match"] and out["top1"] == expected
    assert "top-1" in invoke("eval", run_dir).output


def test_export_writes_a_file_that_reproduces_the_run(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[1], run_dir)  # the module's run stays as the other tests expect it
    res = invoke("export", run_dir, "--cycle", 1)
    assert res.exit_code == 0, res.output
    path = run_dir / "export" / "cycle_1.pt"
    assert f"wrote {path}" in res.output and "max |exported - PyTorch|" in res.output
    recipe, model, _ = load_run(run_dir, cycle=1)
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.jit.load(str(path))(x), model.eval()(x), atol=1e-4, rtol=0)
    assert "export/cycle_1.pt" in json.loads((run_dir / ".prunekit-run.json").read_text())["files"]
    before = path.read_bytes()
    refused = CliRunner().invoke(main, ["export", str(run_dir), "--cycle", "1"])
    assert refused.exit_code == 2 and "already exists" in refused.output and path.read_bytes() == before
    outside = tmp_path / "model.pt"
    assert invoke("export", run_dir, "--out", outside).exit_code == 0 and outside.is_file()


def test_plan_replays_on_a_fresh_model(finished_run):
    recipe_path, run_dir, _ = finished_run
    recipe, reloaded, rec = load_run(run_dir)
    fresh = build_model(recipe, 10)
    replay(fresh, Plan.load_all(run_dir / "plan.json"), example_inputs(recipe))
    assert {g.name: g.width for g in adapter_groups(fresh, example_inputs(recipe))} == \
        {k: v for k, v in rec["widths"].items() if v}
    from safetensors.torch import load_file

    missing, unexpected = fresh.load_state_dict(load_file(run_dir / rec["adapter_file"]), strict=False)
    assert not unexpected
    x = torch.randn(4, 3, 16, 16)
    fresh.eval(), reloaded.eval()
    torch.testing.assert_close(fresh(x), reloaded(x), rtol=0, atol=0)


def test_finished_run_is_never_overwritten(finished_run):
    recipe, run_dir, _ = finished_run
    before = tree_digest(run_dir)
    res = CliRunner().invoke(main, ["run", str(recipe)])
    assert res.exit_code == 2
    assert "already holds a finished run; nothing was changed" in res.output
    assert tree_digest(run_dir) == before


def test_overwrite_replaces_a_run(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"epochs": 1, "warmup_epochs": 0}, strategy={"sigma_target": 8})
    assert invoke("run", recipe, "--quiet").exit_code == 0
    res = invoke("run", recipe, "--overwrite", "--quiet", "--set", "train.seed=1")
    assert res.exit_code == 0 and "| 1 | 8.0 |" in res.output
    assert yaml.safe_load((tmp_path / "runs/tiny/recipe.resolved.yaml").read_text())["train"]["seed"] == 1


def test_missing_checkpoint_is_pretrained_once_then_reused(tmp_path):
    ckpt = tmp_path / "ckpt" / "backbone.safetensors"
    pre = tiny_recipe(tmp_path, name="pre", method={"name": "full"}, strategy={"name": "none", "cycles": 1},
                      data={"name": "digits", "limit_train": 128, "limit_val": 64},
                      train={"epochs": 1, "warmup_epochs": 0}, output={"save_adapters": False})
    main_recipe = tiny_recipe(tmp_path, model={"checkpoint": str(ckpt), "pretrain": pre.name},
                              train={"epochs": 1, "warmup_epochs": 0}, strategy={"sigma_target": 8})
    res = invoke("run", main_recipe)
    assert res.exit_code == 0, res.output
    assert "not found: pretraining it with pre.yaml" in res.output
    assert ckpt.is_file() and (tmp_path / "runs" / "pre" / "DONE").is_file()
    res = invoke("run", main_recipe, "--out", tmp_path / "second")
    assert res.exit_code == 0 and "pretraining" not in res.output
    assert not (tmp_path / "runs" / "pre-2").exists()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    ckpt = tmp_path / "other.pth"
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=48, depth=2,
                                 num_heads=2).state_dict(), ckpt)
    recipe = tiny_recipe(tmp_path, model={"checkpoint": str(ckpt)})
    res = CliRunner().invoke(main, ["run", str(recipe)])
    assert res.exit_code == 2
    assert "is not a checkpoint of VisionTransformer as configured" in res.output and "shape mismatches" in res.output
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("args,message", [
    (["--set", "strategy.name=tian"], "strategy.name: unknown strategy 'tian'; did you mean 'tina'"),
    (["--set", "method.name=lora_qk"], "method.name: unknown method 'lora_qk'"),
    (["--set", "data.name=digit"], "data.name: unknown dataset 'digit'; did you mean 'digits'"),
    (["--set", "model.name=vit_tiny_patch16"], "model.name: unknown timm model 'vit_tiny_patch16'; did you mean"),
    (["--set", "method=linear"], "strategy.name: 'tina' prunes adapters, but method 'linear' has no prunable groups"),
    (["--set", "strategy.sigma_target=2"], "strategy.sigma_target: expected more than method.sigma=4"),
    (["--set", "strategy.cycles=7"], "strategy.cycles: tina needs 3 cycles"),
])
def test_bad_names_fail_before_anything_is_written(tmp_path, args, message):
    recipe = tiny_recipe(tmp_path)
    res = CliRunner().invoke(main, ["run", str(recipe), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")
                                           if "grid" not in yaml.safe_load(p.read_text())))
def test_every_shipped_recipe_passes_a_dry_run_offline(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("run", ROOT / "recipes" / recipe, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "recipe valid" in res.output and "cycles" in res.output
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    r = load_recipe(ROOT / "recipes" / recipe)
    if r.strategy.name != "none":  # the adapters' widths and sigmas per cycle, or what a budget removes per prune
        keys = ("widths_per_cycle", "sigma_per_cycle") if r.strategy.budget.kind is None else ("removed_after_prunes",)
        assert all(k in res.output for k in keys), res.output


def test_paper_recipes_follow_the_protocol():
    swin = load_recipe(ROOT / "recipes" / "tina_swin.yaml")
    assert (swin.model.name, swin.model.pretrained, swin.model.img_size) == ("swin_tiny_patch4_window7_224", True, 224)
    assert (swin.data.name, swin.method["sigma"], swin.strategy.rho) == ("cifar100", 32, 0.5)
    assert (swin.train.optimizer, swin.train.epochs, swin.train.warmup_epochs) == ("adamw", 100, 20)
    res = invoke("run", ROOT / "recipes" / "tina_swin.yaml", "--dry-run")
    assert "cycles                 5" in res.output and "groups                 24" in res.output


def test_dry_run_and_inspect_build_random_weights_whatever_the_recipe_names(tmp_path):
    """A recipe with weights (a checkpoint not made yet) dry-runs and inspects on random weights, offline."""
    recipe = tiny_recipe(tmp_path, model={"allow_random_backbone": False, "checkpoint": str(tmp_path / "later.pth"),
                                          "pretrain": "pre.yaml"})
    assert "recipe valid" in invoke("run", recipe, "--dry-run").output
    assert "groups: 4" in invoke("inspect", recipe).output
    assert not (tmp_path / "later.pth").exists() and not (tmp_path / "runs").exists()


def test_inspect_and_list():
    out = invoke("inspect", ROOT / "recipes" / "quickstart.yaml").output
    assert "blocks.5.mlp" in out and "groups: 12" in out
    assert "tina" in invoke("list", "strategies").output
    assert [line.split()[0] for line in invoke("list", "scorers").output.splitlines()][:2] == ["l1", "l1_activation"]
    assert "parallel_adapters" in invoke("list", "methods").output
    assert "mnist5k" in invoke("list", "datasets").output
    assert "quickstart.yaml" in invoke("list", "recipes").output


HEAVY = ("torch", "timm", "torch_pruning", "torchvision", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["ablate", "--help"], ["list", "strategies"], ["list", "recipes"],
                                  ["run", "{bad}"], ["run", "{bad}", "--dry-run"], ["inspect", "{bad}"]])
def test_answers_that_need_no_model_import_no_torch(args, tmp_path):
    """Help, `list strategies`, `list recipes` and a recipe's schema errors answer before torch, timm, torch-pruning
    or matplotlib is imported (they cost seconds; bench/cli_startup.py measures the start-up)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {epochs: 1}\n")
    code = ("import sys; from click.testing import CliRunner; from prunekit.cli import main; "
            "r = CliRunner().invoke(main, sys.argv[1:]); "
            f"print(r.exit_code, sorted(m for m in {HEAVY!r} if m in sys.modules)); print(r.output)")
    res = subprocess.run([sys.executable, "-c", code, *[a.format(bad=bad) for a in args]], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    status, _, output = res.stdout.partition("\n")
    assert res.returncode == 0, res.stderr[-2000:]
    if "{bad}" in args:
        assert status == "2 []" and "trian: unknown key; did you mean 'train'?" in output
    else:
        assert status == "0 []", output
        assert {"--help": "Usage:", "strategies": "vanilla_l1", "recipes": "quickstart.yaml"}[args[-1]] in output


def test_python_dash_m_and_help():
    res = subprocess.run([sys.executable, "-m", "prunekit", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0
    for command in ("run", "inspect", "list", "eval"):
        assert command in res.stdout
