"""The documentation's code runs as written."""
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


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


def test_prune_any_model_example_runs(capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU: OpenMP threads spinning against other processes are 50x slower
    try:
        snippet = next(b for b in python_blocks(DOCS / "python-api.md") if "pk.prune(" in b)
        namespace: dict = {}
        exec(compile(snippet, "python-api.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    plan = namespace["plan"]
    assert abs(plan.meta["params_after"] / plan.meta["params_before"] - 0.5) < 0.01
    assert plan.meta["macs_after"] < plan.meta["macs_before"]
    assert "->" in capsys.readouterr().out
