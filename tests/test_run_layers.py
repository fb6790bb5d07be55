"""Layers point down: CLI -> run phases -> engine / strategies / methods -> scorers / scopes / plan -> graph.

This file checks the top of the house: the run phases (``prunekit/run/``) and the CLI. tests/test_layers.py checks the
generic core below them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prunekit"
PHASES = PACKAGE / "run"
ABOVE_CORE = {"run", "runner", "cli", "__main__", "ablation"}  # the run phases and what drives them
CLI_MAY_IMPORT = {"run", "errors", "progress", "recipe", "shipped", "ablation"}  # phases + reading the user's input
MAX_PHASE_LINES = 300


def imports_of(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """Dotted prunekit modules a file imports (``run.check``, ``engine``), relative, absolute or inside functions.

    Args:
        path: the file.
        package: the package it is in (default: from its place in the checkout; ``strategies/`` is installed as
            ``prunekit.strategies``).
    """
    if package is None:
        rel = path.relative_to(ROOT).with_suffix("").parts
        package = (("prunekit",) + rel[:-1]) if rel[0] == "strategies" else rel[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                if node.module:
                    targets.append(base + node.module.split("."))
                else:
                    targets += [base + [a.name] for a in node.names]
            elif node.module:
                targets.append(node.module.split("."))
        elif isinstance(node, ast.Import):
            targets += [a.name.split(".") for a in node.names]
        found.update(".".join(t[1:]) for t in targets if t[0] == "prunekit" and len(t) > 1)
    return found


def layers_of(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """Top-level prunekit modules or packages a file imports (``run``, ``engine``, ``methods``)."""
    return {m.split(".")[0] for m in imports_of(path, package)}


def below_the_phases() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if PHASES not in p.parents and p.relative_to(PACKAGE).with_suffix("").parts[0] not in ABOVE_CORE]


def test_the_parser_resolves_relative_absolute_and_lazy_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from .check import a\nfrom .. import distributed\nfrom ..methods.base import b\n"
                 "import prunekit.engine\ndef f():\n    from prunekit.cli import main\n")
    assert imports_of(f, ("prunekit", "run")) == {"run.check", "distributed", "methods.base", "engine", "cli"}
    assert layers_of(PACKAGE / "run" / "pipeline.py") >= {"run", "train", "progress"}


@pytest.mark.parametrize("path", below_the_phases(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_below_the_phases_imports_them(path):
    imported = layers_of(path) & ABOVE_CORE
    assert not imported, f"{path.relative_to(ROOT)} imports {sorted(imported)}, a layer above it"


EXTENSIONS = sorted((PACKAGE / "methods").glob("*.py")) + sorted((ROOT / "strategies").glob("*.py"))


@pytest.mark.parametrize("path", EXTENSIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_and_strategies_import_neither_phases_nor_cli_nor_the_recipe_parser(path):
    imported = layers_of(path) & (ABOVE_CORE | {"recipe"})
    assert not imported, f"{path.relative_to(ROOT)} imports {sorted(imported)}"


def test_the_cli_imports_only_the_phases_and_the_front_end():
    imported = layers_of(PACKAGE / "cli.py")
    assert imported <= CLI_MAY_IMPORT, f"cli.py imports {sorted(imported - CLI_MAY_IMPORT)}"
    assert "run" in imported


def test_runner_is_a_facade_of_the_phases():
    assert layers_of(PACKAGE / "runner.py") == {"run"}


@pytest.mark.parametrize("path", sorted(PHASES.glob("*.py")), ids=lambda p: p.name)
def test_a_phase_imports_no_cli_and_only_the_pipeline_imports_everything(path):
    imported = imports_of(path)
    assert not layers_of(path) & {"cli", "runner", "ablation", "__main__"}, sorted(imported)
    if path.name not in ("__init__.py", "pipeline.py"):
        assert "run.pipeline" not in imported, f"{path.name} imports the pipeline; pass what it needs instead"


@pytest.mark.parametrize("path", sorted(PHASES.glob("*.py")), ids=lambda p: p.name)
def test_a_phase_module_is_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_PHASE_LINES, f"{path.name}: {lines} lines; one phase, one job"
