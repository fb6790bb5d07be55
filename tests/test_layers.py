"""Layers point down only: the generic core never imports the adapters, methods or the run machinery above it."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunekit"
CORE = ["graph", "plan", "scopes", "schedule", "engine", "budget", "policy", "scorers", "snapshot"]
ABOVE = {"adapters", "methods", "runner", "cli", "recipe", "data", "train", "params", "channels", "pruning", "saving",
         "heads", "ablation", "report"}


def prunekit_imports(path: Path) -> set[str]:
    """Top-level prunekit modules a file imports (``from .x import``, ``from prunekit.x import``, ``import ...``),
    including imports inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name.split(".")[0] for a in node.names)
            elif node.module and node.module.startswith("prunekit."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("prunekit."))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            name = str(node.args[0].value)
            found.add(name.split(".")[1] if name.startswith("prunekit.") else name.lstrip(".").split(".")[0])
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_above_it(module):
    imported = prunekit_imports(PACKAGE / f"{module}.py")
    assert not imported & ABOVE, f"prunekit.{module} imports {sorted(imported & ABOVE)}"


def test_the_parser_sees_relative_absolute_and_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .adapters import x\nimport prunekit.cli\ndef f():\n    from prunekit.runner import y\n"
                 "    importlib.import_module('prunekit.train')\n")
    assert prunekit_imports(f) == {"adapters", "cli", "runner", "train"}


def test_adapters_are_a_client_of_the_core():
    assert "graph" in prunekit_imports(PACKAGE / "adapters.py")
    assert "adapters" not in prunekit_imports(PACKAGE / "graph.py")
