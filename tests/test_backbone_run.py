"""Backbone pruning from a recipe: recipes/prune_vit_offline.yaml end to end on a few digits (random weights, one
step per epoch), through the same CLI, run directory, eval, dry run and --resume as a TINA run."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prunekit.budget.search import count_macs
from prunekit.cli import main
from prunekit.core.plan import Plan
from prunekit.run.progress import ProgressReporter
from prunekit.recipe.spec import load_recipe
from prunekit.run import dry_run, load_run, run_recipe
from prunekit.run import example_inputs
from prunekit.train.trainer import Trainer
from test_cli import tiny_recipe
from test_resume import comparable, read_metrics, tensors_of

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "recipes" / "prune_vit_offline.yaml"
# the recipe's architecture on random weights (no checkpoint, no pretraining), 2 steps of 32 digits per cycle
TINY = ["model.checkpoint=null", "model.pretrain=null", "data.limit_train=192", "data.limit_val=64",
        "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=32", "strategy.calibration_batches=2"]
SETS = [a for s in TINY for a in ("--set", s)]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def cycles_of(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["type"] == "cycle"]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """The run the tests compare with; one thread, as the tests' own runs (``one_thread`` is per test, and a module
    fixture is made before it applies): a reduction split over two threads rounds differently."""
    out = tmp_path_factory.mktemp("backbone") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = invoke("run", OFFLINE, *SETS, "--out", out, "--quiet")
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_macs_fall_by_the_budget_and_every_cycle_reports_its_cost(pruned_run):
    out, printed = pruned_run
    cycles = cycles_of(out)
    plans = Plan.load_all(out / "plan.json")
    assert [c["cycle"] for c in cycles] == [0, 1, 2] and len(plans) == 2
    for c in cycles:
        assert c["pruned"] == "backbone" and c["sigma"] is None
        assert c["total_params"] > 0 and c["macs"] > 0 and c["latency_ms"] > 0 and c["wall_s"] > 0
        assert 0 <= c["last_top1"] <= 1
        assert c["adapter_file"] == f"model/cycle_{c['cycle']}.safetensors"
    macs = [c["macs"] for c in cycles]
    assert macs[0] > macs[1] > macs[2] and cycles[0]["total_params"] > cycles[2]["total_params"]
    for cycle, plan, goal in zip(cycles[1:], plans, (0.3, 0.5)):  # 30 % after the first prune, 50 % at the end
        tolerance = plan.meta["budget"]["tolerance"] / macs[0]  # one unit's MACs (a head here)
        assert abs((1 - cycle["macs"] / macs[0]) - goal) <= tolerance + 1e-9, (cycle["macs"], goal, tolerance)
        assert plan.meta["budget"]["reached"] == pytest.approx(1 - cycle["macs"] / macs[0])
    widths = cycles[-1]["widths"]
    assert {n.rsplit(".", 1)[-1] for n in widths} == {"fc1", "heads"}  # MLP neurons and attention heads
    assert all(w >= 1 for w in widths.values())
    report = (out / "report.md").read_text()
    assert "| cycle | units | params | MACs | MACs removed | latency (ms) |" in report
    assert "| cycle | units |" in printed  # the table is printed at the end of the run
    assert (out / "plots" / "units_per_group.png").is_file() and not (out / "adapters").exists()


def test_eval_reloads_the_pruned_model_of_every_cycle(pruned_run):
    out, _ = pruned_run
    cycles = cycles_of(out)
    for cycle in (1, 2):
        res = invoke("eval", out, "--cycle", cycle, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.output.strip().splitlines()[-1])["match"] is True
    recipe, model, _ = load_run(out)
    assert count_macs(model, example_inputs(recipe)) == cycles[-1]["macs"]


def test_dry_run_plans_what_the_run_did(pruned_run):
    out, _ = pruned_run
    info = dry_run(load_recipe(OFFLINE, TINY))
    plans, cycles = Plan.load_all(out / "plan.json"), cycles_of(out)
    assert info["pruned"] == "backbone" and info["cycles"] == len(cycles)
    assert info["removed_after_prunes"] == [p.meta["budget"]["target"] for p in plans]
    assert info["macs_start"] == cycles[0]["macs"]
    assert info["group_kinds"] == "6 head, 6 neuron"
    res = invoke("run", OFFLINE, *SETS, "--dry-run")
    assert "removed_after_prunes   0.3, 0.5" in res.output and "budget                 macs 0.5" in res.output
    res = invoke("inspect", OFFLINE)  # the groups a run prunes, by kind
    assert "blocks.5.attn.heads" in res.output and "blocks.5.mlp.fc1" in res.output
    assert "groups: 12  units: 2322" in res.output


class Interrupted(Exception):
    pass


def run_until_cycle(recipe, out, cycle: int, monkeypatch) -> None:
    """Run ``recipe`` into ``out`` and stop it as training cycle ``cycle`` begins (an interrupted run)."""
    original = Trainer.train_epoch

    def stop(self, model, optimizer, scheduler, cyc, epoch, steps, *rest):
        if cyc == cycle:
            raise Interrupted()
        return original(self, model, optimizer, scheduler, cyc, epoch, steps, *rest)

    monkeypatch.setattr(Trainer, "train_epoch", stop)
    with pytest.raises(Interrupted):
        run_recipe(recipe, out=out, reporter=ProgressReporter(enabled=False))
    monkeypatch.setattr(Trainer, "train_epoch", original)


def test_resume_after_an_interruption_equals_the_uninterrupted_run(pruned_run, tmp_path, monkeypatch):
    whole, _ = pruned_run
    out = tmp_path / "run"
    run_until_cycle(load_recipe(OFFLINE, TINY), out, 2, monkeypatch)
    assert [c["cycle"] for c in cycles_of(out)] == [0, 1] and not (out / "DONE").exists()

    res = invoke("run", "--resume", out)  # replays the first prune, makes the second again, trains cycle 2
    assert res.exit_code == 0, res.output
    assert comparable(read_metrics(out)) == comparable(read_metrics(whole))
    assert json.loads((out / "plan.json").read_text()) == json.loads((whole / "plan.json").read_text())
    for k in range(3):
        assert tensors_of(out / "model" / f"cycle_{k}.safetensors") == tensors_of(
            whole / "model" / f"cycle_{k}.safetensors")


@pytest.mark.parametrize("sets,message", [
    (["strategy.budget.mac=0.5"], "strategy.budget.mac: unknown key; did you mean 'macs'?"),
    (["method=adapters"], "strategy.groups: 'backbone' prunes the model's own channels and heads and fine-tunes "
                          "them, but method 'adapters' keeps the backbone frozen; use method full"),
    (["strategy.budget=null"], "strategy.budget: strategy.groups 'backbone' needs a budget, one of params, macs, "
                               "channels"),
    (["strategy.budget.params=0.5"], "strategy.budget: expected one of params, macs, channels, latency, got 2"),
    (["strategy.budget.macs=1.5"], "strategy.budget.macs: expected the fraction of the model's macs to remove, in "
                                   "(0, 1), got 1.5"),
    (["strategy.groups=backbon"], "strategy.groups: expected 'adapters' or 'backbone', got 'backbon'; did you mean "
                                  "'backbone'?"),
    (["strategy.backbone.min_width=0"], "strategy.backbone.min_width: expected an integer >= 1, got 0"),
    # these need the model: refused once it is built, before the run directory is created
    (["strategy.backbone.ignore=[patch_embed.prj]"], "strategy.backbone.ignore: no module matches "
                                                     "'patch_embed.prj'; did you mean 'patch_embed.proj'"),
    (["strategy.budget.macs=0.95"], "strategy.budget.macs: 0.95 of the model's macs cannot be removed"),
    (["strategy.cycles=5"], "strategy.cycles: tina needs 3 cycles to remove 0.5 of the model's macs with rho=0.3"),
])
def test_a_bad_backbone_recipe_exits_2_and_writes_nothing(tmp_path, sets, message):
    res = CliRunner().invoke(main, ["run", str(OFFLINE), *SETS, *(a for s in sets for a in ("--set", s)),
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_backbone_keys_are_refused_on_an_adapter_run(tmp_path):
    res = CliRunner().invoke(main, ["run", str(tiny_recipe(tmp_path)), "--set", "strategy.backbone.heads=false"])
    assert res.exit_code == 2
    assert "strategy.backbone.heads: applies to strategy.groups: backbone, but the recipe prunes adapters" in res.output


def test_a_channels_budget_on_adapters_plans_the_widths_of_the_matching_sigma(tmp_path):
    """sigma 4 -> 16 keeps a quarter of the adapter neurons; {channels: 0.75} removes three quarters: same plan."""
    recipe = tiny_recipe(tmp_path)
    by_sigma = dry_run(load_recipe(recipe))
    by_budget = dry_run(load_recipe(recipe, ["strategy.budget.channels=0.75"]))
    assert by_budget["cycles"] == by_sigma["cycles"] == 3
    assert by_budget["channels_after_prunes"] == by_sigma["widths_per_cycle"][1:]  # cycle 0 trains before a prune
    assert by_budget["removed_after_prunes"] == [0.5, 0.75] and "method_sigma" in by_budget


def test_a_run_started_before_the_backbone_keys_existed_still_resumes(tmp_path, monkeypatch):
    """resume.pt of an older prunekit has no strategy.groups / budget / backbone: defaults join it; other values
    (the recipe edited since) are still refused."""
    import yaml

    from prunekit.train.resume import STATE_FILE, load_state, recipe_digest, save_state

    recipe, out = tiny_recipe(tmp_path, train={"epochs": 1}), tmp_path / "run"
    run_until_cycle(load_recipe(recipe), out, 1, monkeypatch)
    state = load_state(out / STATE_FILE)
    for key in ("groups", "budget", "backbone"):  # as an older prunekit saved it
        del state["recipe"]["strategy"][key]
    state["recipe_digest"] = recipe_digest(state["recipe"])
    save_state(out / STATE_FILE, state)

    resolved = out / "recipe.resolved.yaml"
    edited = yaml.safe_load(resolved.read_text())
    edited["strategy"]["budget"] = {"channels": 0.75}
    text = resolved.read_text()
    resolved.write_text(yaml.safe_dump(edited, sort_keys=False))
    res = CliRunner().invoke(main, ["run", "--resume", str(out)])
    assert res.exit_code == 2 and "strategy.budget.channels: (absent) in resume.pt, 0.75" in res.output

    resolved.write_text(text)
    res = invoke("run", "--resume", out)
    assert res.exit_code == 0, res.output
    assert [c["cycle"] for c in cycles_of(out)] == [0, 1, 2] and (out / "DONE").exists()


def test_a_latency_budget_from_a_recipe_prunes_to_measured_time(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    sets = TINY + ["strategy.budget.macs=null", "strategy.budget.latency=0.2"]
    info = dry_run(load_recipe(OFFLINE, sets), estimate=False)
    assert info["budget"] == "latency 0.2" and info["latency_ms_start"] > 0
    assert info["latency_ms_after_prunes"][-1] == pytest.approx(0.8 * info["latency_ms_start"], rel=1e-3)
    out = tmp_path / "run"
    res = invoke("run", OFFLINE, *(a for s in sets for a in ("--set", s)), "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    plans = Plan.load_all(out / "plan.json")
    assert plans and all(p.meta["budget"]["kind"] == "latency" for p in plans)
    assert all(0 < p.meta["budget"]["reached"] < 1 for p in plans)  # measured after each prune
    assert list((tmp_path / "cache" / "latency").glob("*.json"))  # the tables were cached
