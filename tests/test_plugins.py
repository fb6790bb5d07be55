"""Open registries: a package installed next to prunekit adds a scorer and a dataset through entry points, and a
recipe uses both by name (tests/plugin_pkg, the package docs/python-api.md shows)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from prunekit.models.backbone import MODELS, register_model
from prunekit.cli import main
from prunekit.registry import PrunekitError, import_object
from test_cli import TINY_MODEL, tiny_recipe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).resolve().parent / "plugin_pkg"
DOC = ROOT / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The plug-in installed into a temporary folder (never the global site-packages); the environment that sees it."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(PLUGIN, src)  # pip builds in the source tree: build/ and *.egg-info stay out of tests/
    target = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the plug-in failed:\n{proc.stdout}\n{proc.stderr}")
    assert list(target.glob("prunekit_stripes-*.dist-info/entry_points.txt")), sorted(p.name for p in target.iterdir())
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def prunekit(env: dict[str, str], *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_list_shows_the_installed_scorer_and_dataset(installed):
    scorers = prunekit(installed, "list", "scorers")
    assert scorers.returncode == 0, scorers.stderr
    assert re.search(r"^weight_product +L2 norm of each neuron's down row", scorers.stdout, re.M), scorers.stdout
    assert "tina" in scorers.stdout  # the built-ins are still there
    datasets = prunekit(installed, "list", "datasets")
    assert re.search(r"^stripes +offline +600 noisy images", datasets.stdout, re.M), datasets.stdout
    assert "weight_product" not in subprocess.run([sys.executable, "-m", "prunekit", "list", "scorers"],
                                                  capture_output=True, text=True, timeout=300).stdout  # not installed


def test_a_recipe_runs_with_the_installed_scorer_and_dataset(installed, tmp_path):
    recipe = tiny_recipe(tmp_path, name="plugin", strategy={"scorer": "weight_product"},
                         data={"name": "stripes", "limit_train": 128, "limit_val": 64},
                         train={"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "lr": 1e-2})
    res = prunekit(installed, "run", recipe, "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = tmp_path / "runs" / "plugin"
    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["strategy"]["scorer"] == "weight_product" and resolved["data"]["name"] == "stripes"
    assert resolved["resolved"] == {"method_sigma": 4.0, "scorer": "weight_product", "scope": "global",
                                    "mode": "iterative", "sigma_reference": None}
    plans = json.loads((run_dir / "plan.json").read_text())["plans"]
    assert [p["meta"]["scorer"] for p in plans] == ["weight_product", "weight_product"]
    cycles = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "cycle"]
    assert [c["sigma"] for c in cycles] == [4.0, 8.0, 16.0]
    assert prunekit(installed, "eval", run_dir).returncode == 0  # reloads through the plug-in's dataset


def test_a_recipe_names_its_own_scorer_by_module_path(installed, tmp_path):
    recipe = tiny_recipe(tmp_path, strategy={"scorer": "prunekit_stripes.scorers:weight_product", "scope": "local"})
    res = prunekit(installed, "run", recipe, "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"scorer +prunekit_stripes\.scorers:weight_product", res.stdout), res.stdout
    assert re.search(r"scope +local", res.stdout)
    missing = prunekit({**installed, "PYTHONPATH": str(ROOT)}, "run", recipe, "--dry-run")  # not importable
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert ("error: strategy.scorer: cannot import scorer 'prunekit_stripes.scorers:weight_product': no module "
            "named 'prunekit_stripes'") in missing.stderr


def test_the_documented_plugin_is_the_tested_one():
    doc = DOC.read_text()
    for path in ("pyproject.toml", "prunekit_stripes/scorers.py", "prunekit_stripes/datasets.py"):
        text = (PLUGIN / path).read_text()
        body = text.split("\n", 1)[1] if path.endswith(".py") else text  # the docstring line is the doc's heading
        assert body.strip() in doc, f"docs/python-api.md does not show tests/plugin_pkg/{path} as it is"


def test_import_object_names_what_failed():
    assert import_object("json:dumps", "scorer") is json.dumps
    for path, message in [("json", "is not a 'package.module:function' path"),
                          ("json:JSONDecodeError.nope", "has no attribute 'nope'"),
                          ("json:__doc__", "is a str, not a callable")]:
        with pytest.raises(PrunekitError, match=re.escape(message)):
            import_object(path, "scorer")


def test_a_registered_model_builder_is_a_model_name(tmp_path):
    import timm

    def build(cfg, num_classes, pretrained):
        return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=cfg.img_size,
                                 in_chans=cfg.in_chans, **cfg.kwargs)

    register_model("tiny_vit_builder", build, description="a ViT built by a test", mean=(0.5,) * 3, std=(0.25,) * 3,
                   overwrite=True)
    try:
        assert "tiny_vit_builder" in CliRunner().invoke(main, ["list", "models"]).output
        recipe = tiny_recipe(tmp_path, model={**TINY_MODEL, "name": "tiny_vit_builder"})
        res = CliRunner().invoke(main, ["run", str(recipe), "--dry-run"])
        assert res.exit_code == 0, res.output
        assert re.search(r"model +tiny_vit_builder", res.output) and re.search(r"groups +4", res.output)
        from prunekit.models.backbone import normalization

        assert normalization("tiny_vit_builder") == ((0.5,) * 3, (0.25,) * 3)
        typo = CliRunner().invoke(main, ["run", str(recipe), "--dry-run", "--set", "model.name=tiny_vit_buider"])
        assert typo.exit_code == 2 and "did you mean 'tiny_vit_builder'" in typo.output
    finally:
        MODELS._entries.pop("tiny_vit_builder", None)


def test_every_registry_reads_its_entry_point_group():
    from prunekit.data.datasets import DATASETS
    from prunekit.methods import METHODS
    from prunekit.ranking.scopes import SCOPES
    from prunekit.ranking.scorers import SCORERS
    from prunekit.engine.strategy import STRATEGIES

    groups = {r.kind: r.entry_point_group for r in (SCORERS, SCOPES, STRATEGIES, METHODS, DATASETS, MODELS)}
    assert groups == {"scorer": "prunekit.scorers", "scope": "prunekit.scopes", "strategy": "prunekit.strategies",
                      "method": "prunekit.methods", "dataset": "prunekit.datasets", "model builder": "prunekit.models"}
    assert SCORERS.import_paths and SCOPES.import_paths and not DATASETS.import_paths
