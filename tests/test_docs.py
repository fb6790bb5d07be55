"""The documentation's code runs as written."""
import re
from pathlib import Path

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
    from prunekit.budget import count_params

    assert count_params(model) == after and model.eval()(x).shape == (1, 10)
    assert (tmp_path / "resnet18-half" / "model.safetensors").is_file()


def test_generic_pruning_page_runs_as_written(tmp_path, monkeypatch, capsys, one_thread):
    """Every Python block of docs/generic-pruning.md, in order, in an empty folder (one intra-op thread)."""
    blocks = python_blocks(DOCS / "generic-pruning.md")
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    spaces = []
    for i, block in enumerate(blocks):
        spaces.append({})
        exec(compile(block, f"generic-pruning.md[{i}]", "exec"), spaces[-1])
    one, engine, scorers = spaces
    assert abs(one["plan"].meta["reached"] - 0.5) < 0.01 and one["plan"].meta["macs_after"] < one["plan"].meta[
        "macs_before"]
    history = engine["engine"].history
    assert [r.plan is not None for r in history] == [True, True, False]
    assert abs(history[1].reached - 0.75) < 0.02
    assert (tmp_path / "resnet18-quarter" / "prunekit.json").is_file()
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[-4:]] == ["coupled_l1", "l1_mean", "lamp", "l2_max"]
    assert all(abs(float(line.split()[1]) - 0.5) < 0.02 for line in out[-4:])
    assert scorers["plan"].meta["scorer"] == "taylor"
