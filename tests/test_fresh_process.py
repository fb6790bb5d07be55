"""What this process saves, a new Python process loads: users reload in a fresh interpreter, not in the one that
pruned. Every test here saves in the test process and loads in ``subprocess.run([sys.executable, "-c", ...])`` with a
clean environment (no inherited variables but PATH and HOME; prunekit found where this process found it). The loading
side writes its outputs to a file; they must equal this process's bit for bit (one thread on both sides).

Covered: ``load_pruned`` (a timm CNN, a ViT with heads pruned, MNASNet's versioned state dict, an ``Engine`` run with
two prunes on backbone groups, an adapter run with an emptied adapter), ``plan.json`` replay, ``prunekit.load`` of a
run directory (adapters and backbone pruning) and of one trained file, and ``prunekit eval`` / ``predict`` /
``export`` as commands; and every registry's built-ins in a bare interpreter.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm  # noqa: F401  (the BUILD expressions)
import torch
import torchvision  # noqa: F401
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import prunekit as pk
from prunekit.cli import main
from prunekit.core.plan import Plan

from test_cli import tiny_recipe

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

PACKAGE_ROOT = Path(pk.__file__).resolve().parents[1]  # the folder holding the prunekit under test

# One expression per model, evaluated here and in the fresh process: both sides build the same unpruned architecture.
BUILD = {
    "resnet18": "timm.create_model('resnet18', num_classes=10)",
    "vit": "timm.create_model('vit_tiny_patch16_224', img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, "
           "num_classes=5)",
    "mnasnet": "torchvision.models.mnasnet0_5(num_classes=10)",
}


def clean_env() -> dict[str, str]:
    """No inherited variables but PATH and HOME; one thread; prunekit found where this process found it."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(PACKAGE_ROOT)}


def fresh_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter with a clean environment; fails the test with its output when it fails."""
    prelude = "import torch; torch.set_num_threads(1)\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout)
    assert proc.returncode == 0, f"the fresh process failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def fresh_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m prunekit ARGS`` in a new interpreter (as the ``prunekit`` command runs)."""
    return subprocess.run([sys.executable, "-m", "prunekit", *map(str, args)], capture_output=True, text=True,
                          env=clean_env(), cwd=cwd, timeout=timeout)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return eval(BUILD[name])


def load_pruned_elsewhere(name: str, directory: Path, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    """``load_pruned`` of ``directory`` into a fresh ``BUILD[name]`` in a new process; its output on ``x``."""
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    fresh_python(f"""
        import timm, torchvision
        from safetensors.torch import load_file, save_file
        import prunekit as pk
        torch.manual_seed(0)
        model = pk.load_pruned({str(directory)!r}, {BUILD[name]}).eval()
        with torch.no_grad():
            y = model(load_file({str(tmp_path / 'x.safetensors')!r})["x"])
        save_file({{"y": y.contiguous()}}, {str(tmp_path / 'y.safetensors')!r})
    """)
    return load_file(str(tmp_path / "y.safetensors"))["y"]


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def randomize_norms(model: nn.Module) -> None:
    """BatchNorm statistics away from (0, 1), so a reload that lost them shows in the output."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ------------------------------------------------------------------------------------------------------ load_pruned

@pytest.mark.parametrize("name, shape, ratio", [("resnet18", (2, 3, 32, 32), 0.5), ("mnasnet", (2, 3, 64, 64), 0.3)])
def test_a_pruned_cnn_loads_in_a_new_process(name, shape, ratio, tmp_path):
    model = build(name)
    randomize_norms(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    plan = pk.prune(model, x[:1], ratio=ratio)
    assert plan.meta["params_after"] < plan.meta["params_before"]
    pk.save_pruned(model, tmp_path / "pruned")
    assert torch.equal(load_pruned_elsewhere(name, tmp_path / "pruned", x, tmp_path), output(model, x))


def test_mnasnet_module_versions_travel_with_the_weights(tmp_path):
    """MNASNet's ``_load_from_state_dict`` refuses a state dict without its version (``_metadata``)."""
    from safetensors import safe_open

    model = build("mnasnet")
    pk.prune(model, torch.randn(1, 3, 64, 64), ratio=0.3)
    pk.save_pruned(model, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        versions = json.loads(f.metadata()["prunekit.module_versions"])
    assert versions[""] == {"version": 2}  # MNASNet._version
    assert versions["layers.1"] == {"version": 2}  # a BatchNorm2d
    assert "layers.0" not in versions  # a Conv2d: nn.Module's default version, not written
    # what loading hands load_state_dict: every module's entry, the defaults included, as the state dict had them
    from prunekit.io.statedict import complete_versions, load_safetensors

    loaded = complete_versions(load_safetensors(tmp_path / "m" / "model.safetensors"), build("mnasnet"))
    assert dict(loaded._metadata) == dict(model.state_dict()._metadata)


def test_a_vit_with_heads_pruned_loads_in_a_new_process(tmp_path):
    model = build("vit")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pk.prune(model, x[:1], ratio=0.2, heads=True, ignore=["blocks.*.mlp.fc1", "patch_embed.proj"])  # heads only
    heads = [b.attn.num_heads for b in model.blocks]
    assert max(heads) < 4, heads  # whole heads went in every block
    pk.save_pruned(model, tmp_path / "vit")
    assert torch.equal(load_pruned_elsewhere("vit", tmp_path / "vit", x, tmp_path), output(model, x))


def _train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def train(m, optimizer, cycle):
        m.train()
        for _ in range(2):
            loss = nn.functional.cross_entropy(m(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"loss": loss.item()}

    return train


def test_an_engine_run_with_two_prunes_loads_in_a_new_process(tmp_path):
    model = build("resnet18")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    engine = pk.Engine(model, _train_steps(model, x, y), example_inputs=x[:1], scorer="l1",
                       budget=pk.Budget.params(0.5), rho=0.3, groups_fn=pk.backbone_groups())
    engine.run()
    assert len(engine.plans) == 2
    pk.save_pruned(model, tmp_path / "engine")
    assert torch.equal(load_pruned_elsewhere("resnet18", tmp_path / "engine", x, tmp_path), output(model, x))

    # plan.json alone: replay rebuilds the structure, the weights come from any state-dict file
    Plan.save_all(engine.plans, tmp_path / "plan.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    fresh_python(f"""
        import timm
        from safetensors.torch import load_file, save_file
        import prunekit as pk
        from prunekit.core.plan import Plan
        x = load_file({str(tmp_path / 'x.safetensors')!r})["x"]
        torch.manual_seed(0)
        model = {BUILD['resnet18']}
        pk.replay(model, Plan.load_all({str(tmp_path / 'plan.json')!r}), x[:1])
        model.load_state_dict(load_file({str(tmp_path / 'weights.safetensors')!r}), strict=True)
        with torch.no_grad():
            save_file({{"y": model.eval()(x).contiguous()}}, {str(tmp_path / 'y.safetensors')!r})
    """)
    assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["y"], output(model, x))


def test_an_adapter_run_loads_in_a_new_process(tmp_path):
    """TINA on injected adapters, through the sigma where a whole adapter goes; the group source is 'adapters'."""
    inject = "pk.inject_adapters(model, sigma=4); pk.mark_trainable(model)"
    model = build("vit")
    exec(inject, {"pk": pk, "model": model})
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 5
    engine = pk.Engine(model, _train_steps(model, x, y), example_inputs=x[:1], strategy="tina", rho=0.75,
                       sigma_target=64)
    history = engine.run()
    assert len(engine.plans) == 2 and 0 in history[-1].widths.values()  # an adapter emptied and removed
    pk.save_pruned(model, tmp_path / "adapters")
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    fresh_python(f"""
        import sys, timm
        from safetensors.torch import load_file, save_file
        import prunekit as pk
        torch.manual_seed(0)
        model = {BUILD['vit']}
        {inject}
        # the group source registry finds its built-ins itself: nothing imported the adapters' groups yet
        assert "prunekit.groups.channels" not in sys.modules and "prunekit.adapters.groups" not in sys.modules
        pk.load_pruned({str(tmp_path / 'adapters')!r}, model)
        with torch.no_grad():
            save_file({{"y": model.eval()(load_file({str(tmp_path / 'x.safetensors')!r})["x"]).contiguous()}},
                      {str(tmp_path / 'y.safetensors')!r})
    """)
    assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["y"], output(model, x))


# ------------------------------------------------------------------------------------------------- run directories

def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished recipe runs made in this process: TINA on adapters (an adapter emptied on the way) and backbone
    pruning (heads and MLP neurons, two prunes); plus validation images as PNG files in val/<class>/."""
    tmp = tmp_path_factory.mktemp("fresh_runs")
    small = {"name": "digits", "limit_train": 192, "limit_val": 48}
    train = {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "lr": 1e-2}
    adapters = tiny_recipe(tmp, name="adapters", method={"name": "adapters", "sigma": 4},
                           strategy={"sigma_target": 64, "rho": 0.75}, data=small, train=train)
    backbone = tiny_recipe(tmp, name="backbone", method={"name": "full"},
                           strategy={"name": "tina", "groups": "backbone", "budget": {"macs": 0.4}, "rho": 0.25,
                                     "backbone": {"heads": True, "ignore": ["patch_embed.proj"]}},
                           data=small, train=train)
    for recipe in (adapters, backbone):
        res = _invoke("run", recipe, "--quiet")
        assert res.exit_code == 0, res.output
    val = tmp / "val"
    from prunekit.recipe.spec import load_recipe
    from prunekit.run import load_bundle

    bundle = load_bundle(load_recipe(adapters))
    for i in range(12):
        image, label = bundle.val[i]
        folder = val / bundle.classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.numpy()).save(folder / f"{i:03d}.png")
    return {"adapters": tmp / "runs" / "adapters", "backbone": tmp / "runs" / "backbone", "val": val, "tmp": tmp}


def _load_elsewhere(source: Path, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    fresh_python(f"""
        from safetensors.torch import load_file, save_file
        import prunekit as pk
        model = pk.load({str(source)!r})
        with torch.no_grad():
            save_file({{"y": model(load_file({str(tmp_path / 'x.safetensors')!r})["x"]).contiguous()}},
                      {str(tmp_path / 'y.safetensors')!r})
    """)
    return load_file(str(tmp_path / "y.safetensors"))["y"]


@pytest.mark.parametrize("kind", ["adapters", "backbone"])
def test_prunekit_load_of_a_run_directory_in_a_new_process(runs, kind, tmp_path):
    run_dir = runs[kind]
    cycles = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cycles = [c for c in cycles if c["type"] == "cycle"]
    assert len(cycles) >= 3  # two prunes or more
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_load_elsewhere(run_dir, x, tmp_path), output(pk.load(run_dir), x))


@pytest.mark.parametrize("kind", ["adapters", "backbone"])
def test_a_run_directory_loads_without_tracing(runs, kind, monkeypatch):
    """Its plans recorded what they changed: the rebuilt model is resized, not traced and replayed."""
    import torch_pruning as tp

    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    expected = output(pk.load(runs[kind]), x)

    def refuse(*a, **k):
        raise AssertionError("loading the run traced the model")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", refuse)
    assert torch.equal(output(pk.load(runs[kind]), x), expected)


def test_one_trained_file_loads_in_a_new_process(runs, tmp_path):
    alone = tmp_path / "task.safetensors"
    last = sorted((runs["adapters"] / "adapters").glob("cycle_*.safetensors"))[-1]
    shutil.copy(last, alone)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_load_elsewhere(alone, x, tmp_path), output(pk.load(runs["adapters"]), x))


@pytest.mark.parametrize("kind", ["adapters", "backbone"])
def test_eval_and_predict_commands_in_a_new_process(runs, kind, tmp_path):
    run_dir = runs[kind]
    evaluated = fresh_cli("eval", run_dir, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert json.loads(evaluated.stdout)["match"] is True
    predicted = fresh_cli("predict", run_dir, runs["val"], "--top-k", "2", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    here = _invoke("predict", run_dir, runs["val"], "--top-k", "2")
    assert predicted.stdout == here.output and "12 images" in predicted.stdout


@pytest.mark.parametrize("kind", ["adapters", "backbone"])
def test_export_command_in_a_new_process(runs, kind, tmp_path):
    out = tmp_path / "model.pt"
    res = fresh_cli("export", runs[kind], "--format", "torchscript", "--out", out, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exported = torch.jit.load(str(out))(x)
    torch.testing.assert_close(exported, output(pk.load(runs[kind]), x), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------------ registries

REGISTRIES = [("prunekit.engine.sources", "GROUP_SOURCES"), ("prunekit.ranking.scorers", "SCORERS"),
              ("prunekit.ranking.scopes", "SCOPES"), ("prunekit.engine.strategy", "STRATEGIES"),
              ("prunekit.methods.base", "METHODS"), ("prunekit.data.datasets", "DATASETS"),
              ("prunekit.models.backbone", "MODELS"), ("prunekit.groups.heads.layouts", "HEAD_LAYOUTS")]


def test_every_registry_finds_its_builtins_in_a_bare_interpreter():
    """A lookup right after importing the registry's own module sees what a process that imported everything sees."""
    names = "{m + '.' + a: getattr(importlib.import_module(m), a).names() for m, a in %r}" % REGISTRIES
    everything = fresh_python(f"""
        import importlib, json
        import prunekit, prunekit.cli, prunekit.run, prunekit.groups.channels, prunekit.adapters.groups
        import prunekit.methods, prunekit.strategies, prunekit.engine.oneshot
        print(json.dumps({names}))
    """)
    full = json.loads(everything.stdout)
    assert full["prunekit.engine.sources.GROUP_SOURCES"] == ["adapters", "backbone"]
    empty = [k for k, v in full.items() if not v]
    assert empty == ["prunekit.models.backbone.MODELS"], empty  # no model builders built in: timm's names are
    for module, attr in REGISTRIES:
        bare = fresh_python(f"""
            import importlib, json
            print(json.dumps(importlib.import_module({module!r}).{attr}.names()))
        """)
        assert json.loads(bare.stdout) == full[f"{module}.{attr}"], f"{module}.{attr}"
