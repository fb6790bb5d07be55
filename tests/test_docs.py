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
