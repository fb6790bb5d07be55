"""Bad input through the command line: exit code 2, a message that names the key, the value and what is allowed,
and nothing written.

One table, one test. Every row runs ``prunekit ...`` against a shared workspace holding a finished run directory,
recipe files and checkpoint files. The test snapshots the workspace (bytes and mtime of every file, mtime of every
folder) before the command and compares after it, checks that the ``--out`` folder was not created and that nothing
appeared in the working directory. Nothing is pretrained or downloaded; the one finished run is a single step.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import timm
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from prunekit.cli import main
from prunekit.engine.strategy import STRATEGIES, Strategy

from conftest import snapshot

pytestmark = pytest.mark.integration

TINY_MODEL = {"name": "vit_tiny_patch16_224", "img_size": 16, "allow_random_backbone": True,  # no weights offline
              "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "avg"}}
FAN = 2 * 2 * 32  # an adapter after attention and after the MLP of 2 blocks, m = 32 each: sigma_target <= 128


def base_recipe(ws: Path) -> dict[str, Any]:
    """Tiny TINA run (sigma 4 -> 16) on 16 px digits; never trained by this module."""
    return {"name": "tiny", "model": dict(TINY_MODEL), "method": {"name": "adapters", "sigma": 4},
            "strategy": {"name": "tina", "rho": 0.5, "sigma_target": 16},
            "data": {"name": "digits", "limit_train": 16, "limit_val": 16},
            "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "max_steps_per_epoch": 1},
            "output": {"dir": str(ws / "runs"), "plot": False}}


def merge(base: dict[str, Any], patch: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """``patch`` merged into ``base``; a ``method`` section replaces the base's (its keys depend on its name)."""
    out = dict(base)
    for k, v in patch.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and not (top and k == "method")
        out[k] = merge(out[k], v, top=False) if nested else v
    return out


def raise_offline(*args: Any, **kwargs: Any):
    raise urllib.error.URLError("[Errno -2] Name or service not known (test: no network)")


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", raise_offline)


def plugin_with_unknown_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party strategy (entry point / register_strategy) naming a scorer that is not registered."""
    monkeypatch.setitem(STRATEGIES._entries, "plugin_typo",
                        Strategy(name="plugin_typo", scorer="tinna", scope="global", mode="iterative"))


@dataclass
class Row:
    id: str
    args: list[str]  # "{recipe}" (the base recipe), "{row_recipe}" (base + patch), "{ws}", "{out}", "{tmp}"
    expect: list[str]  # substrings of the output, formatted like args
    patch: dict[str, Any] | None = None  # written to {ws}/rows/<id>.yaml before the snapshot
    setup: Callable[[pytest.MonkeyPatch], None] | None = None
    subprocess_env: dict[str, str] | None = None  # run `python -m prunekit` with these variables (read at import)
    absent: list[str] = field(default_factory=list)  # paths that must not exist afterwards, formatted like args


def alias_bomb(levels: int) -> str:
    """A YAML flow mapping ``{a: &a [1 x 10], b: &b [*a x 10], ...}``; its last key expands to > 10**levels values."""
    keys = "abcdefghij"[:levels]
    parts = [f"a: &a [{', '.join(['1'] * 10)}]"]
    parts += [f"{k}: &{k} [{', '.join([f'*{prev}'] * 10)}]" for prev, k in zip(keys, keys[1:])]
    return "{" + ", ".join(parts) + "}"


OUT = ["--out", "{out}"]
ALIAS_BOMB_6 = alias_bomb(6).replace("{", "{{").replace("}", "}}")  # braces doubled: args are formatted
PRETRAIN_FIRST = ["--set", "model.checkpoint={ws}/not_yet.safetensors", "--set", "model.pretrain=pretrain.yaml"]
IMAGE_EXTS = ".jpg, .jpeg, .png"

ROWS = [
    # 1. malformed YAML
    Row("malformed-yaml", ["run", "{ws}/bad.yaml", *OUT],
        ["{ws}/bad.yaml: malformed YAML at line 3, column 6: expected ',' or '}}'"]),  # '}}': a brace, formatted
    # 2. unknown keys, with did-you-mean and the allowed keys
    Row("unknown-key", ["run", "{row_recipe}", *OUT],
        ["train.lrr: unknown key; did you mean 'lr'?", "allowed in train: optimizer, lr, min_lr"],
        patch={"train": {"lrr": 0.1}}),
    Row("unknown-section", ["run", "{row_recipe}", *OUT], ["trian: unknown key; did you mean 'train'?"],
        patch={"trian": {"lr": 0.1}}),
    Row("unknown-key-set", ["run", "{recipe}", "--set", "strategy.sigma_targt=32", *OUT],
        ["strategy.sigma_targt: unknown key; did you mean 'sigma_target'"]),
    # 3. wrong types
    Row("wrong-type", ["run", "{row_recipe}", *OUT], ["train.lr: expected a float, got 'fast'"],
        patch={"train": {"lr": "fast"}}),
    Row("wrong-literal", ["run", "{recipe}", "--set", "train.optimizer=adam", *OUT],
        ["train.optimizer: expected 'adamw' or 'sgd', got 'adam'; did you mean 'adamw'?"]),
    # 4. sigma_target at or below the method's sigma (sigma0)
    Row("sigma-target-equal", ["run", "{row_recipe}", *OUT],
        ["strategy.sigma_target: expected more than method.sigma=4", "got 4"], patch={"strategy": {"sigma_target": 4}}),
    Row("sigma-target-below", ["run", "{recipe}", "--set", "strategy.sigma_target=2", *OUT],
        ["strategy.sigma_target: expected more than method.sigma=4", "got 2"]),
    # 5. rho outside (0, 1)
    Row("rho-zero", ["run", "{row_recipe}", *OUT], ["strategy.rho: expected a fraction in (0, 1), got 0"],
        patch={"strategy": {"rho": 0}}),
    Row("rho-above-one", ["run", "{recipe}", "--set", "strategy.rho=1.5", *OUT],
        ["strategy.rho: expected a fraction in (0, 1), got 1.5"]),
    # 6. a sigma_target the adapters cannot reach (fewer than one neuron would remain); the model is planned on
    # random weights before training. With model.pretrain due to run, it must fail before pretraining writes.
    Row("sigma-target-unreachable", ["run", "{recipe}", "--set", "strategy.sigma_target=1000", *OUT],
        ["strategy.sigma_target: 1000 cannot be reached", f"m = {FAN}", f"must be at most {FAN}"]),
    Row("sigma-target-unreachable-before-pretrain",
        ["run", "{recipe}", *PRETRAIN_FIRST, "--set", "strategy.sigma_target=1000", *OUT],
        ["strategy.sigma_target: 1000 cannot be reached", f"must be at most {FAN}"],
        absent=["{ws}/not_yet.safetensors", "{tmp}/pretrain"]),
    # 7. unknown model
    Row("unknown-model", ["run", "{recipe}", "--set", "model.name=vit_tiny_patch16", *OUT],
        ["model.name: unknown timm model 'vit_tiny_patch16'; did you mean", "'vit_tiny_patch16_224'"]),
    # 8. unknown strategy
    Row("unknown-strategy", ["run", "{row_recipe}", *OUT],
        ["strategy.name: unknown strategy 'tian'; did you mean 'tina'?", "allowed: ", "local_l1", "(or 'none')"],
        patch={"strategy": {"name": "tian"}}),
    # 9. scorers and scopes: a recipe may replace its strategy's (a registered name or a module:function path,
    # imported while checking); a plug-in strategy may name an unregistered scorer; `prunekit list` refuses a
    # misspelt kind.
    Row("scorer-unknown-in-recipe", ["run", "{row_recipe}", *OUT],
        ["strategy.scorer: unknown scorer 'tinna'; did you mean 'tina'?", "allowed: l1, l1_activation"],
        patch={"strategy": {"scorer": "tinna"}}),
    Row("scorer-path-not-importable",
        ["run", "{recipe}", "--set", "strategy.scorer=no_such_pkg.scores:weight_norm", *OUT],
        ["strategy.scorer: cannot import scorer 'no_such_pkg.scores:weight_norm': no module named 'no_such_pkg'"]),
    Row("scorer-path-no-function",
        ["run", "{recipe}", "--set", "strategy.scorer=prunekit.ranking.scorers:tinna", "--dry-run"],
        ["strategy.scorer: cannot import scorer 'prunekit.ranking.scorers:tinna': 'prunekit.ranking.scorers' has no "
         "attribute 'tinna'; did you mean 'tina'?"]),
    Row("scope-unknown-in-recipe", ["run", "{recipe}", "--set", "strategy.scope=globl", *OUT],
        ["strategy.scope: unknown scope 'globl'; did you mean 'global'", "allowed: global, local"]),
    Row("mode-unknown-in-recipe", ["run", "{recipe}", "--set", "strategy.mode=oneshoot", *OUT],
        ["strategy.mode: expected 'iterative' or 'oneshot', got 'oneshoot'; did you mean 'oneshot'?"]),
    Row("plugin-strategy-unknown-scorer", ["run", "{recipe}", "--set", "strategy.name=plugin_typo", *OUT],
        ["strategy.name: strategy 'plugin_typo' names an unknown scorer 'tinna'; did you mean 'tina'?",
         "allowed: l1, l1_activation"], setup=plugin_with_unknown_scorer),
    Row("plugin-strategy-unknown-scorer-dry-run", ["run", "{recipe}", "--set", "strategy.name=plugin_typo",
                                                   "--dry-run"],
        ["strategy.name: strategy 'plugin_typo' names an unknown scorer 'tinna'"], setup=plugin_with_unknown_scorer),
    Row("list-unknown-kind", ["list", "scorer"], ["Invalid value", "'scorer' is not one of", "'scorers'"]),
    # 10. unknown dataset
    Row("unknown-dataset", ["run", "{recipe}", "--set", "data.name=digit", *OUT],
        ["data.name: unknown dataset 'digit'; did you mean 'digits'?", "allowed: cifar10"]),
    # 11. unknown method
    Row("unknown-method", ["run", "{row_recipe}", *OUT],
        ["method.name: unknown method 'adaptor'; did you mean 'adapters'", "allowed: adapters"],
        patch={"method": {"name": "adaptor", "sigma": 4}}),
    # 12. missing checkpoint (no pretraining recipe to make it; or one that does not exist)
    Row("missing-checkpoint", ["run", "{recipe}", "--set", "model.checkpoint={ws}/missing.safetensors", *OUT],
        ["model.checkpoint: no such file '{ws}/missing.safetensors'", "model.pretrain"]),
    Row("missing-pretrain-recipe",
        ["run", "{recipe}", "--set", "model.checkpoint={ws}/not_yet.safetensors", "--set", "model.pretrain=nope.yaml",
         *OUT],
        ["model.pretrain: no such recipe '{ws}/nope.yaml'", "model.checkpoint '{ws}/not_yet.safetensors'"]),
    # 13. corrupt checkpoints (random bytes)
    Row("corrupt-checkpoint-pth", ["run", "{recipe}", "--set", "model.checkpoint={ws}/corrupt.pth", *OUT],
        ["model.checkpoint: '{ws}/corrupt.pth' is not a readable checkpoint: not a torch file",
         "corrupt or truncated"]),
    Row("corrupt-checkpoint-safetensors",
        ["run", "{recipe}", "--set", "model.checkpoint={ws}/corrupt.safetensors", *OUT],
        ["model.checkpoint: '{ws}/corrupt.safetensors' is not a readable checkpoint", "SafetensorError"]),
    # 14. a checkpoint of another architecture: names the file and the keys / shapes that do not fit
    Row("checkpoint-other-architecture", ["run", "{recipe}", "--set", "model.checkpoint={ws}/resnet.pth", *OUT],
        ["model.checkpoint: {ws}/resnet.pth is not a checkpoint of VisionTransformer as configured",
         "model keys missing (e.g. cls_token)", "unknown keys (e.g. conv1."]),
    Row("checkpoint-other-width", ["run", "{recipe}", "--set", "model.checkpoint={ws}/vit48.pth", *OUT],
        ["model.checkpoint: {ws}/vit48.pth is not a checkpoint of VisionTransformer as configured",
         "shape mismatches (e.g. cls_token: checkpoint (1, 1, 48) vs model (1, 1, 32))"]),
    # 15. a dataset absent offline: what to fetch and where
    Row("dataset-absent-offline",
        ["run", "{recipe}", "--set", "data.name=cifar10", "--set", "data.root={ws}/empty_root", *OUT],
        ["data.name=cifar10: no dataset files under {ws}/empty_root", "data.download: true",
         "copy cifar-10-batches-py/ (cifar-10-python.tar.gz) into {ws}/empty_root"]),
    Row("dataset-absent-offline-before-pretrain",
        ["run", "{recipe}", *PRETRAIN_FIRST, "--set", "data.name=cifar10", "--set", "data.root={ws}/empty_root",
         *OUT],
        ["data.name=cifar10: no dataset files under {ws}/empty_root"],
        absent=["{ws}/not_yet.safetensors", "{tmp}/pretrain"]),
    Row("dataset-download-without-network",
        ["run", "{recipe}", "--set", "data.name=cifar10", "--set", "data.root={tmp}/new_root", "--set",
         "data.download=true", *OUT],
        ["data.name=cifar10: could not download into {tmp}/new_root (URLError", "copy cifar-10-batches-py/"],
        setup=no_network, absent=["{tmp}/new_root"]),
    # 16. image folders without images
    Row("imagefolder-no-images",
        ["run", "{recipe}", "--set", "data.name=imagefolder", "--set", "data.root={ws}/no_images", *OUT],
        ["data.root='{ws}/no_images': no images in train/cat/, train/dog/", f"image files end in {IMAGE_EXTS}"]),
    Row("imagefolder-no-classes",
        ["run", "{recipe}", "--set", "data.name=imagefolder", "--set", "data.root={ws}/no_classes", *OUT],
        ["data.root='{ws}/no_classes': train/ holds no class folders (expected train/<class>/<image>)"]),
    Row("imagefolder-no-split",
        ["run", "{recipe}", "--set", "data.name=imagefolder", "--set", "data.root={ws}/empty_root", *OUT],
        ["data.root='{ws}/empty_root': expected train/ and val/ (or test/)"]),
    # 17. an existing finished run without --overwrite (the recipe's own run directory)
    Row("finished-run-no-overwrite", ["run", "{ws}/finished.yaml"],
        ["output: {ws}/runs/finished already holds a finished run; nothing was changed", "--overwrite"]),
    Row("finished-run-no-overwrite-out", ["run", "{recipe}", "--out", "{ws}/runs/finished"],
        ["output: {ws}/runs/finished already holds a finished run; nothing was changed"]),
    # hub weights while offline: huggingface_hub reads HF_HUB_OFFLINE at import, hence a fresh process
    Row("hub-weights-offline", ["run", "{recipe}", "--set", "model.pretrained=true", *OUT],
        ["model.pretrained: could not get hub weights for 'vit_tiny_patch16_224'", "set model.checkpoint"],
        subprocess_env={"HF_HUB_OFFLINE": "1", "HF_HOME": "{tmp}/hf_home"}),
    # 18. the recipe file itself: not UTF-8, empty, not a mapping, an alias bomb
    Row("recipe-not-utf8", ["run", "{ws}/latin1.yaml", *OUT],
        ["{ws}/latin1.yaml: not UTF-8 text (byte 0xe9 at line 1", "save the recipe as UTF-8"]),
    Row("ablation-not-utf8", ["ablate", "{ws}/latin1_ablation.yaml", *OUT],
        ["{ws}/latin1_ablation.yaml: not UTF-8 text (byte 0xe9 at line 1", "save the ablation as UTF-8"]),
    Row("ablation-base-not-utf8", ["ablate", "{ws}/ablation_latin1_base.yaml", *OUT],
        ["base: {ws}/latin1.yaml: not UTF-8 text (byte 0xe9"]),
    Row("recipe-empty", ["run", "{ws}/empty.yaml", *OUT], ["recipe '{ws}/empty.yaml' is empty"]),
    Row("recipe-only-comments", ["run", "{ws}/comments.yaml", "--dry-run"], ["recipe '{ws}/comments.yaml' is empty"]),
    Row("ablation-empty", ["ablate", "{ws}/empty.yaml", *OUT], ["ablation '{ws}/empty.yaml' is empty"]),
    Row("recipe-top-level-list", ["run", "{ws}/top_list.yaml", *OUT],
        ["{ws}/top_list.yaml: expected a mapping of sections (model:, method:, data:, ...) at the top level, got a "
         "list ['model', 'train']"]),
    Row("ablation-top-level-list", ["ablate", "{ws}/top_list.yaml", *OUT],
        ["{ws}/top_list.yaml: expected a mapping (base:, grid:, ...) at the top level, got list"]),
    Row("yaml-alias-bomb", ["run", "{ws}/bomb.yaml", *OUT],
        ["model.kwargs.lol: YAML anchors and aliases expand to 1,111,111,111 values, more than the 100,000",
         "alias bomb"]),
    Row("yaml-alias-bomb-set", ["run", "{recipe}", "--set", "model.kwargs=" + ALIAS_BOMB_6, *OUT],
        ["model.kwargs.f: YAML anchors and aliases expand to 1,111,111 values"]),
    Row("yaml-recursive-alias", ["run", "{ws}/recursive.yaml", *OUT],
        ["model.kwargs.again: a YAML alias refers to the anchor it sits in"]),
    # 19. numbers out of range; 0 is a value, not "unset"
    Row("seed-negative", ["run", "{recipe}", "--set", "train.seed=-1", *OUT],
        ["train.seed: expected an integer in 0 .. 4294967295 (2**32 - 1", "got -1"]),
    Row("seed-too-large", ["run", "{row_recipe}", *OUT],
        ["train.seed: expected an integer in 0 .. 4294967295", f"got {2**70}"], patch={"train": {"seed": 2**70}}),
    Row("ablation-seed-negative", ["ablate", "{ws}/ablation_bad_seed.yaml", *OUT],
        ["grid.seeds: expected integers in 0 .. 4294967295 (as train.seed), got [-1]"]),
    Row("limit-train-negative", ["run", "{recipe}", "--set", "data.limit_train=-1", *OUT],
        ["data.limit_train: expected an integer >= 1 or null (every training image), got -1"]),
    Row("limit-train-zero", ["run", "{row_recipe}", *OUT],
        ["data.limit_train: expected an integer >= 1 or null (every training image), got 0"],
        patch={"data": {"limit_train": 0}}),
    Row("num-workers-negative", ["run", "{recipe}", "--set", "data.num_workers=-1", *OUT],
        ["data.num_workers: expected an integer >= 0, got -1"]),
    Row("max-steps-zero", ["run", "{recipe}", "--set", "train.max_steps_per_epoch=0", *OUT],
        ["train.max_steps_per_epoch: expected an integer >= 1 or null (the whole training set), got 0"]),
    Row("eval-batch-size-zero", ["run", "{recipe}", "--set", "train.eval_batch_size=0", *OUT],
        ["train.eval_batch_size: expected an integer >= 1 or null (2 x train.batch_size), got 0"]),
    Row("in-chans-zero", ["run", "{recipe}", "--set", "model.in_chans=0", *OUT],
        ["model.in_chans: expected an integer >= 1, got 0"]),
    Row("in-chans-zero-dry-run", ["run", "{recipe}", "--set", "model.in_chans=0", "--dry-run"],
        ["model.in_chans: expected an integer >= 1, got 0"]),
    # 20. data: a missing root, unreadable image files, one class
    Row("data-root-missing",
        ["run", "{recipe}", "--set", "data.name=imagefolder", "--set", "data.root={ws}/nowhere", *OUT],
        ["data.root='{ws}/nowhere' does not exist (data.name=imagefolder)"]),
    Row("data-root-missing-domainnet",
        ["run", "{recipe}", "--set", "data.name=domainnet", "--set", "data.domain=clipart", "--set",
         "data.root={ws}/nowhere", *OUT], ["data.root='{ws}/nowhere' does not exist (data.name=domainnet)"]),
    Row("imagefolder-unreadable-images",
        ["run", "{recipe}", "--set", "data.name=imagefolder", "--set", "data.root={ws}/broken_images", *OUT],
        ["data.root='{ws}/broken_images': 2 image file(s) cannot be read: train/cat/garbage.png (",
         "train/dog/truncated.jpg (OSError: image file is truncated", "set data.skip_unreadable: true"]),
    Row("imagefolder-one-class",
        ["run", "{recipe}", "--set", "data.name=imagefolder", "--set", "data.root={ws}/one_class", *OUT],
        ["data.name=imagefolder, data.root='{ws}/one_class': 1 class ('cat'); a classification task needs at least "
         "2 classes"]),
    # 21. a method that freezes the backbone, on random weights, without model.allow_random_backbone
    Row("frozen-random-backbone-adapters", ["run", "{recipe}", "--set", "model.allow_random_backbone=false", *OUT],
        ["model: method 'adapters' freezes the backbone, but 'vit_tiny_patch16_224' would keep its random initial "
         "weights", "model.allow_random_backbone: true"]),
    Row("frozen-random-backbone-linear",
        ["run", "{recipe}", "--set", "model.allow_random_backbone=false", "--set", "method=linear", "--set",
         "strategy.name=none", *OUT], ["model: method 'linear' freezes the backbone"]),
    Row("frozen-random-backbone-dry-run",
        ["run", "{recipe}", "--set", "model.allow_random_backbone=false", "--set", "method=lora", "--set",
         "strategy.name=none", "--dry-run"], ["model: method 'lora' freezes the backbone"]),
    Row("pretrain-without-checkpoint", ["run", "{recipe}", "--set", "model.pretrain=pretrain.yaml", *OUT],
        ["model.pretrain: 'pretrain.yaml' runs only to write model.checkpoint, which is not set"]),
    # 22. eval of a damaged run directory (copies of the finished run)
    Row("eval-truncated-adapter", ["eval", "{ws}/damaged/truncated_adapter"],
        ["{ws}/damaged/truncated_adapter/adapters/cycle_0.safetensors: not a readable .safetensors file",
         "corrupt or truncated"]),
    Row("eval-garbage-adapter", ["eval", "{ws}/damaged/garbage_adapter"],
        ["{ws}/damaged/garbage_adapter/adapters/cycle_0.safetensors: not a readable .safetensors file"]),
    Row("eval-deleted-adapter", ["eval", "{ws}/damaged/deleted_adapter"],
        ["{ws}/damaged/deleted_adapter/adapters/cycle_0.safetensors: missing; metrics.jsonl records it as cycle 0's"]),
    Row("eval-truncated-plan", ["eval", "{ws}/damaged/truncated_plan"],
        ["{ws}/damaged/truncated_plan/plan.json: not a readable plan file (JSONDecodeError", "truncated or edited?"]),
    Row("eval-truncated-metrics-line", ["eval", "{ws}/damaged/truncated_metrics", "--json"],
        ["{ws}/damaged/truncated_metrics/metrics.jsonl: line 2 is not a JSON record (the last line: a write cut "
         "short by a crash?)"]),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run, recipes and checkpoints: what a bad command must leave alone."""
    ws = tmp_path_factory.mktemp("ws")
    base = base_recipe(ws)
    (ws / "recipe.yaml").write_text(yaml.safe_dump(base))
    (ws / "bad.yaml").write_text("name: bad\nmodel: {name: vit_tiny_patch16_224\ntrain: [1, 2\n")
    (ws / "rows").mkdir()
    for row in ROWS:
        if row.patch is not None:
            (ws / "rows" / f"{row.id}.yaml").write_text(yaml.safe_dump(merge(base, row.patch)))
    pretrain = merge(base, {"name": "pretrain", "method": {"name": "full"}, "strategy": {"name": "none"},
                            "data": {"name": "mnist5k"}})
    (ws / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    finished = merge(base, {"name": "finished", "method": {"name": "linear"}, "strategy": {"name": "none"}})
    (ws / "finished.yaml").write_text(yaml.safe_dump(finished))
    res = CliRunner().invoke(main, ["run", str(ws / "finished.yaml"), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (ws / "runs" / "finished" / "DONE").is_file()

    torch.manual_seed(0)
    vit = timm.create_model(TINY_MODEL["name"], img_size=16, num_classes=10, **TINY_MODEL["kwargs"])
    save_file(vit.state_dict(), str(ws / "backbone.safetensors"))  # a good checkpoint, to be left alone
    wide = dict(TINY_MODEL["kwargs"], embed_dim=48)
    torch.save(timm.create_model(TINY_MODEL["name"], img_size=16, num_classes=10, **wide).state_dict(),
               ws / "vit48.pth")
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), ws / "resnet.pth")
    noise = random.Random(0).randbytes(4096)
    assert not noise.startswith((b"PK", b"\x80"))  # no zip or pickle header
    (ws / "corrupt.pth").write_bytes(noise)
    (ws / "corrupt.safetensors").write_bytes(noise)

    (ws / "empty_root").mkdir()
    for split in ("train", "val"):
        (ws / "no_classes" / split).mkdir(parents=True)
        for cls in ("cat", "dog"):
            (ws / "no_images" / split / cls).mkdir(parents=True)
            (ws / "no_images" / split / cls / "README.txt").write_text("not an image\n")
    write_recipe_files(ws, base)
    write_image_folders(ws, noise)
    write_damaged_runs(ws, ws / "runs" / "finished", noise)
    return ws


def write_recipe_files(ws: Path, base: dict[str, Any]) -> None:
    """Recipe and ablation files that are wrong as files: encoding, emptiness, shape, aliases."""
    (ws / "latin1.yaml").write_bytes("# caf\u00e9\n".encode("latin-1") + yaml.safe_dump(base).encode())
    ablation = {"base": "recipe.yaml", "grid": {"strategies": ["tina"], "sigma_targets": [8], "seeds": [0],
                                                "sigma0": 4}}
    (ws / "latin1_ablation.yaml").write_bytes("# caf\u00e9\n".encode("latin-1") + yaml.safe_dump(ablation).encode())
    (ws / "ablation_latin1_base.yaml").write_text(yaml.safe_dump({**ablation, "base": "latin1.yaml"}))
    (ws / "ablation_bad_seed.yaml").write_text(yaml.safe_dump(merge(ablation, {"grid": {"seeds": [-1]}})))
    (ws / "empty.yaml").write_text("")
    (ws / "comments.yaml").write_text("# a recipe, some day\n")
    (ws / "top_list.yaml").write_text("- model\n- train\n")
    level: list[Any] = ["lol"] * 10
    for _ in range(8):  # 10 + 10**2 + ... + 10**9 values once expanded, in a file of a few hundred bytes
        level = [level] * 10
    bomb = yaml.safe_dump(merge(base, {"model": {"kwargs": {"lol": level}}}))
    assert len(bomb) < 4000 and "*id" in bomb  # PyYAML writes the shared lists as anchors and aliases
    (ws / "bomb.yaml").write_text(bomb)
    (ws / "recursive.yaml").write_text("name: recursive\nmodel:\n  name: vit_tiny_patch16_224\n"
                                       "  kwargs: &loop {again: *loop}\n")


def write_image_folders(ws: Path, noise: bytes) -> None:
    """Image folders with a garbage PNG and a truncated JPEG, and one with a single class."""
    from PIL import Image

    def image(path: Path, value: int, fmt: str = "PNG") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(path, format=fmt)

    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(2):
                image(ws / "broken_images" / split / cls / f"{i}.png", 40 * c + 10 * i)
        for i in range(2):
            image(ws / "one_class" / split / "cat" / f"{i}.png", 10 * i)
    (ws / "broken_images" / "train" / "cat" / "garbage.png").write_bytes(noise[:1000])
    jpeg = ws / "broken_images" / "train" / "dog" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    jpeg.write_bytes(jpeg.read_bytes()[:len(jpeg.read_bytes()) // 2])


def write_damaged_runs(ws: Path, finished: Path, noise: bytes) -> None:
    """Copies of the finished run, each with one file truncated, replaced by noise or deleted."""
    def copy(name: str) -> Path:
        dest = ws / "damaged" / name
        shutil.copytree(finished, dest)
        return dest

    adapter = Path("adapters") / "cycle_0.safetensors"
    d = copy("truncated_adapter")
    (d / adapter).write_bytes((d / adapter).read_bytes()[:300])
    d = copy("garbage_adapter")
    (d / adapter).write_bytes(noise)
    d = copy("deleted_adapter")
    (d / adapter).unlink()
    d = copy("truncated_plan")
    (d / "plan.json").write_bytes((d / "plan.json").read_bytes()[:20])
    d = copy("truncated_metrics")
    metrics = (d / "metrics.jsonl").read_bytes()
    assert metrics.count(b"\n") == 2  # one epoch line, one cycle line
    (d / "metrics.jsonl").write_bytes(metrics[:-40])




def describe_changes(before: dict[str, tuple], after: dict[str, tuple]) -> str:
    new = sorted(after.keys() - before.keys())
    gone = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    return f"new: {new}; removed: {gone}; changed: {changed}"


def invoke(row: Row, args: list[str], fmt: dict[str, Any]) -> tuple[int, str]:
    """Exit code and output (stdout + stderr) of ``prunekit ARGS``, in this process or a fresh one."""
    if row.subprocess_env is not None:
        env = {**os.environ, **{k: v.format(**fmt) for k, v in row.subprocess_env.items()}}
        proc = subprocess.run([sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, env=env,
                              cwd=Path.cwd(), timeout=300)
        return proc.returncode, proc.stdout + proc.stderr
    res = CliRunner().invoke(main, args)
    output = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        output += "".join(traceback.format_exception(res.exception))
    return res.exit_code, output


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_fails_early_with_a_clear_message(row: Row, workspace: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a relative path written by mistake lands here, not in the repository
    out = tmp_path / "out"
    fmt = {"ws": workspace, "out": out, "tmp": tmp_path, "recipe": workspace / "recipe.yaml",
           "row_recipe": workspace / "rows" / f"{row.id}.yaml"}
    args = [a.format(**fmt) for a in row.args]
    if row.setup is not None:
        row.setup(monkeypatch)
    before = snapshot(workspace)

    code, output = invoke(row, args, fmt)

    assert code == 2, f"exit code {code}, expected 2:\n{output}"
    assert "Traceback" not in output, output
    for part in row.expect:
        assert part.format(**fmt) in output, f"{part.format(**fmt)!r} not in:\n{output}"
    if "--out" in row.args:
        assert not out.exists(), f"--out folder created: {sorted(p.name for p in out.rglob('*'))}"
    after = snapshot(workspace)
    assert after == before, describe_changes(before, after)
    assert not any(cwd.iterdir()), f"written to the working directory: {sorted(p.name for p in cwd.iterdir())}"
    for path in row.absent:
        assert not Path(path.format(**fmt)).exists(), path.format(**fmt)


def test_eval_mismatch_has_its_own_exit_code(workspace: Path, tmp_path: Path):
    """A run that reloads but re-measures another top-1 than it recorded: MISMATCH and exit 3 (2 is bad input)."""
    finished = workspace / "runs" / "finished"
    assert CliRunner().invoke(main, ["eval", str(finished)]).exit_code == 0  # as recorded
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    cycle = json.loads(lines[-1])
    cycle["last_top1"] = cycle["last_top1"] + 0.25 if cycle["last_top1"] < 0.5 else cycle["last_top1"] - 0.25
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(cycle)]) + "\n")

    res = CliRunner().invoke(main, ["eval", str(run)])
    assert res.exit_code == 3, res.output
    assert "  MISMATCH" in res.output and "error:" not in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["eval", str(run), "--json"])
    assert res.exit_code == 3 and json.loads(res.output)["match"] is False
    help_text = CliRunner().invoke(main, ["eval", "--help"]).output
    assert "3 it does not (MISMATCH" in help_text and "2 RUN_DIR or its files cannot be used" in help_text
