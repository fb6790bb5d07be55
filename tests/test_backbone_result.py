"""The pretrained backbone's own numbers: a pretraining run writes its result into the checkpoint's metadata;
``backbone_result`` reads it back, or re-measures a checkpoint that carries none; ``prunekit ablate`` reports it."""
import csv
import json

import pytest
import yaml
from safetensors.torch import load_file, save_file

from prunekit.errors import PrunekitError
from prunekit.recipe.spec import load_recipe
from prunekit.run.backbone_result import backbone_result
from prunekit.run.checkpoint import checkpoint_result

from test_cli import TINY_MODEL, invoke, tiny_recipe

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 1-epoch pretraining run of the tiny ViT on digits, its checkpoint and its recorded cycle."""
    tmp = tmp_path_factory.mktemp("pre")
    ckpt = tmp / "backbone.safetensors"
    pre = tiny_recipe(tmp, name="pre", method={"name": "full"}, strategy={"name": "none", "cycles": 1},
                      train={"epochs": 1, "warmup_epochs": 0},
                      output={"save_checkpoint": str(ckpt), "save_adapters": False, "plot": False})
    res = invoke("run", pre, "--quiet")
    assert res.exit_code == 0, res.output
    metrics = [json.loads(line) for line in (tmp / "runs" / "pre" / "metrics.jsonl").read_text().splitlines()]
    return tmp, ckpt, next(m for m in metrics if m["type"] == "cycle")


def adapting(tmp, ckpt, name="task"):
    """A recipe adapting the pretrained backbone (its pretraining recipe named, as the shipped recipes do)."""
    return tiny_recipe(tmp, name=name, model={**TINY_MODEL, "allow_random_backbone": False,
                                              "checkpoint": str(ckpt), "pretrain": "pre.yaml"},
                       train={"epochs": 1, "warmup_epochs": 0}, data={"limit_train": 96, "limit_val": 48})


def test_the_checkpoint_carries_what_made_it(pretrained):
    tmp, ckpt, cycle = pretrained
    meta = checkpoint_result(ckpt)
    assert meta["recipe"] == "pre" and meta["data"] == "digits" and meta["epochs"] == 1 and meta["seed"] == 0
    assert meta["last_top1"] == cycle["last_top1"] and meta["best_top1"] == cycle["best_top1"]
    assert meta["total_params"] == cycle["total_params"] > 0
    got = backbone_result(load_recipe(adapting(tmp, ckpt)))
    assert got["source"] == "metadata" and got["top1"] == cycle["last_top1"] and got["epochs"] == 1


def test_a_checkpoint_without_a_result_is_re_measured_to_the_recorded_top1(pretrained):
    tmp, ckpt, cycle = pretrained
    plain = tmp / "plain.safetensors"  # the same weights, written by something else: no metadata
    save_file(load_file(ckpt), plain)
    assert checkpoint_result(plain) is None
    got = backbone_result(load_recipe(adapting(tmp, plain, "task_plain")))
    assert got["source"] == "measured" and got["val_images"] == 128  # the pretraining recipe's own split
    assert got["top1"] == cycle["last_top1"] and got["params"] == cycle["total_params"]


def test_no_result_without_a_checkpoint_or_a_way_to_measure_it(pretrained, tmp_path):
    tmp, ckpt, _ = pretrained
    assert backbone_result(load_recipe(tiny_recipe(tmp_path))) is None  # random weights
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(ckpt), plain)
    recipe = load_recipe(adapting(tmp, plain, "task_no_pretrain"), ["model.pretrain=null"])
    assert backbone_result(recipe) is None


def test_ablate_puts_the_backbone_in_its_tables(pretrained):
    tmp, ckpt, cycle = pretrained
    base = adapting(tmp, ckpt, "abl_base")
    spec = tmp / "abl.yaml"
    spec.write_text(yaml.safe_dump({"name": "abl", "base": base.name, "grid": {
        "strategies": ["tina"], "sigma_targets": [8], "seeds": [0], "sigma0": 4, "vanilla_adapters": False}}))
    res = invoke("ablate", spec, "--out", tmp / "abl")
    assert res.exit_code == 0, res.output
    with open(tmp / "abl" / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["tina", "backbone"]
    assert float(rows[-1]["top1_mean"]) == pytest.approx(cycle["last_top1"], abs=1e-6)
    assert rows[-1]["trainable_mean"] == str(cycle["total_params"]) and rows[-1]["epochs"] == "1"
    md = (tmp / "abl" / "table.md").read_text()
    assert "## Backbone" in md and f"top-1 {100 * cycle['last_top1']:.2f} %" in md


def test_a_backbone_that_cannot_be_measured_leaves_its_row_out_with_a_line(pretrained):
    tmp, ckpt, _ = pretrained
    plain = tmp / "plain_other.safetensors"  # no result inside, and its pretraining recipe no longer matches it
    save_file(load_file(ckpt), plain)
    other = yaml.safe_load((tmp / "pre.yaml").read_text())
    other["model"]["kwargs"] = {**other["model"]["kwargs"], "depth": 3}
    (tmp / "pre_other.yaml").write_text(yaml.safe_dump(other))
    base = tiny_recipe(tmp, name="abl_other", model={**TINY_MODEL, "allow_random_backbone": False,
                                                     "checkpoint": str(plain), "pretrain": "pre_other.yaml"},
                       train={"epochs": 1, "warmup_epochs": 0}, data={"limit_train": 96, "limit_val": 48})
    with pytest.raises(PrunekitError):
        backbone_result(load_recipe(base))
    spec = tmp / "abl_other_grid.yaml"
    spec.write_text(yaml.safe_dump({"name": "abl_other", "base": base.name, "grid": {
        "strategies": ["tina"], "sigma_targets": [8], "seeds": [0], "sigma0": 4, "vanilla_adapters": False}}))
    res = invoke("ablate", spec, "--out", tmp / "abl_other")
    assert res.exit_code == 0, res.output
    assert "the backbone's row is left out of the tables" in res.output
    with open(tmp / "abl_other" / "table.csv") as f:
        assert [r["row"] for r in csv.DictReader(f)] == ["tina"]
