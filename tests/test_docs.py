"""The documentation's code runs as written."""
import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(path: Path) -> list[str]:
    return python_blocks_of(path.read_text())


def python_blocks_of(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_python_api_quick_example_runs_tina_with_a_custom_scorer(capsys):
    snippet = python_blocks(DOCS / "python-api.md")[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) < 30
    namespace: dict = {}
    exec(compile(snippet, "python-api.md", "exec"), namespace)
    history = namespace["history"]
    assert len(history) == 4 and history[-1].sigma >= 32
    assert history[-1].trainable_params < history[0].trainable_params
    assert "cycle 3: sigma=32" in capsys.readouterr().out


def test_python_api_scope_example_matches_its_comments():
    import torch  # noqa: F401  (the snippet uses it)

    snippet = python_blocks(DOCS / "python-api.md")[2]
    namespace = {"torch": __import__("torch")}
    exec(snippet, namespace)
    assert namespace["plan"].remove == {"a": [0, 1]} and namespace["plan"].emptied() == ["a"]


def test_prune_any_model_example_runs(capsys, one_thread):
    snippet = next(b for b in python_blocks(DOCS / "python-api.md") if "pk.prune(" in b)
    namespace: dict = {}
    exec(compile(snippet, "python-api.md", "exec"), namespace)
    plan = namespace["plan"]
    assert abs(plan.meta["params_after"] / plan.meta["params_before"] - 0.5) < 0.01
    assert plan.meta["macs_after"] < plan.meta["macs_before"]
    assert "->" in capsys.readouterr().out


def test_readme_prune_any_model_snippet_runs(tmp_path, monkeypatch, capsys, one_thread):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Prune any model", 1)[1].split("\n## ", 1)[0]
    snippet = python_blocks_of(section)[0]
    assert 6 <= len([line for line in snippet.splitlines() if line.strip()]) <= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    before, after = namespace["plan"].meta["params_before"], namespace["plan"].meta["params_after"]
    assert abs(after / before - 0.5) < 0.01
    assert capsys.readouterr().out.strip() == f"{before} -> {after}"
    model, x = namespace["model"], namespace["x"]
    from prunekit.budget.search import count_parameters

    assert count_parameters(model) == after and model.eval()(x).shape == (1, 10)
    assert (tmp_path / "resnet18-half" / "model.safetensors").is_file()


def test_generic_pruning_page_runs_as_written(tmp_path, monkeypatch, capsys, one_thread):
    """Every Python block of docs/generic-pruning.md, in order, in an empty folder (one intra-op thread)."""
    blocks = python_blocks(DOCS / "generic-pruning.md")
    assert len(blocks) == 7
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))  # the latency tables
    spaces, outs = [], []
    for i, block in enumerate(blocks):
        spaces.append({})
        exec(compile(block, f"generic-pruning.md[{i}]", "exec"), spaces[-1])
        outs.append(capsys.readouterr().out.splitlines())
    one, engine, scorers, hf, native, distill, latency = spaces
    assert abs(one["plan"].meta["reached"] - 0.5) < 0.01 and one["plan"].meta["macs_after"] < one["plan"].meta[
        "macs_before"]
    history = engine["engine"].history
    assert [r.plan is not None for r in history] == [True, True, False]
    assert abs(history[1].reached - 0.75) < 0.02
    assert (tmp_path / "resnet18-quarter" / "prunekit.json").is_file()
    assert [line.split()[0] for line in outs[2][-4:]] == ["l1", "l1_mean", "lamp", "l2_max"]
    assert all(abs(float(line.split()[1]) - 0.5) < 0.02 for line in outs[2][-4:])
    assert scorers["plan"].meta["scorer"] == "taylor"
    assert abs(hf["plan"].meta["reached"] - 0.3) < 0.05 and hf["heads"]  # heads and neurons both went
    assert hf["ids"].shape == (1, 12) and (tmp_path / "llama-pruned" / "prunekit.json").is_file()
    # reloading without prunekit: the kwargs printed, the free model's reason, the export's report
    assert "'mlp_ratio'" in outs[4][0] and native["native"]["library"] == "timm"
    assert "MLP widths differ between blocks" in outs[4][1] and "uniform=True" in outs[4][1]
    assert "'format': 'torch_export'" in outs[4][2] and (tmp_path / "vit-free.pt2").is_file()
    assert native["again"].config.intermediate_size < 128 and (tmp_path / "llama-uniform" / "config.json").is_file()
    # distillation: cycle 0 without a teacher, the recovery cycles with the frozen unpruned copy
    assert [line.split()[:2] for line in outs[5][:-1]] == [["0", "False"], ["1", "True"], ["2", "True"]]
    assert distill["engine"].teacher.model.layer1[0].conv1.out_channels == 64 and outs[5][-1].startswith("Teacher(")
    # latency: measured before and after; the pruned model is faster
    lat = latency["lat"]
    assert lat["measured_ms"] < lat["before_ms"] and outs[6][0].endswith(f"(target {lat['target_ms']:.1f})")


def bash_commands(text: str) -> list[str]:
    """Every command of the ```bash blocks, in order: comments dropped, ``a && b`` split in two."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [c.strip() for c in line.split("&&")]
    return commands


# README commands the test does not run, and why; any other command must run (a new one cannot slip through).
README_NOT_RUN = {
    "pip install -e '.[dev]'": "installs prunekit; the test runs the prunekit it imports",
    "python -m pytest -q": "the test suite itself",
    "python bench/run_all.py": "the benchmarks take hours; tests/test_bench.py runs one with --quick",
    "prunekit ablate recipes/ablation_offline.yaml --jobs 2":
        "the whole grid takes hours; the --dry-run line before it checks the file and every one of its runs",
    "prunekit ablate recipes/ablation_flowers_swin.yaml --launcher slurm --partition gpu":
        "needs a SLURM cluster; tests/test_ablation_cluster.py submits through submitit with a stand-in sbatch",
}
# What every training command gets appended: one short epoch per cycle, on a random backbone, so the test neither
# takes the quickstart's minutes nor reads or writes the cached checkpoint in ~/.cache.
FAST = ["--set", "train.epochs=1", "--set", "train.warmup_epochs=0", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.limit_val=48", "--set", "model.checkpoint=null", "--set", "model.pretrain=null",
        "--set", "model.allow_random_backbone=true"]


def own_images(root: Path) -> None:
    """``my_images/{train,val}/{circles,squares}/*.png``: the README's own-images example needs a folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for k, cls in enumerate(("circles", "squares")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (24, 24, 3), dtype=np.uint8)
                pixels[6:18, 6:18] += np.uint8(100 + 30 * k)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


@pytest.mark.slow  # 1-2 min: two of the commands build Swin-T, one starts two processes
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, one_thread):
    """The README's bash blocks, in order, in an empty folder (with the checkout's recipes/ beside them): each
    training command with FAST appended, the rest exactly as written; all exit 0 and the runs land where the README
    says."""
    import shlex
    import subprocess
    import sys

    from click.testing import CliRunner

    from prunekit.cli import main

    commands = bash_commands((ROOT / "README.md").read_text())
    assert set(README_NOT_RUN) <= set(commands), "README_NOT_RUN names a command the README no longer has"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    own_images(tmp_path / "my_images")
    outputs = {}
    for command in commands:
        if command in README_NOT_RUN:
            continue
        argv = shlex.split(command)
        trains = "run" in argv and "--dry-run" not in argv and "--resume" not in argv
        args = argv[1:] + (FAST if trains else [])
        if argv[0] == "torchrun":
            env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            res = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], capture_output=True,
                                 text=True, env=env, timeout=600)
            assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
            outputs[command] = res.stdout
            continue
        if argv[:3] == ["python", "-m", "prunekit"]:
            args = argv[3:]
        else:
            assert argv[0] == "prunekit", f"the README test does not know how to run {command!r}"
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, f"{command}\n{res.output}\n{res.exception!r}"
        outputs[command] = res.output
    runs = tmp_path / "runs"
    for name in ("quickstart", "qs_3_epochs", "qs_lora", "qs_ddp", "my_task"):
        assert (runs / name / "DONE").is_file(), name
    lora = [json.loads(line) for line in (runs / "qs_lora" / "metrics.jsonl").read_text().splitlines()]
    tina = [json.loads(line) for line in (runs / "quickstart" / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["type"] == "cycle" for m in lora) == sum(m["type"] == "cycle" for m in tina) == 4  # same budget
    assert (runs / "quickstart" / "export" / "cycle_3.pt").is_file()
    predicted = next(out for c, out in outputs.items() if c.startswith("prunekit predict"))
    assert "top-1 against the folder names" in predicted and "circles" in predicted
    assert "estimate:" in next(out for c, out in outputs.items() if "ablate" in c)


def test_quickstart_use_your_result_runs(tmp_path, monkeypatch, capsys, one_thread):
    """docs/quickstart.md ends with load, predict and export in under 15 lines; they run on a quickstart run (one
    short epoch per cycle, random backbone) in an empty folder."""
    from click.testing import CliRunner

    from prunekit.cli import main

    text = (DOCS / "quickstart.md").read_text()
    assert text.rsplit("\n## ", 1)[1].startswith("Use your result")  # the page ends with it
    snippet = python_blocks_of(text.rsplit("\n## ", 1)[1])[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) < 15
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", "quickstart", *FAST])
    assert res.exit_code == 0, res.output
    capsys.readouterr()
    namespace: dict = {}
    exec(compile(snippet, "quickstart.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["digit_0.png", "digit_1.png"]
    top = namespace["row"].top
    assert len(top) == 2 and top[0][1] == str(top[0][0]) and top[0][2] >= top[1][2]
    import torch

    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(torch.jit.load("quickstart.pt")(x), namespace["model"](x), atol=1e-4, rtol=0)
