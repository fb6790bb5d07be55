"""Layers point down. A module's layer is its folder (``prunekit/core/plan.py`` is in ``core``); the modules at the
top of the package are the foundation (errors, registries, config helpers), except ``cli`` / ``__main__`` (the top)
and ``__init__`` (the public surface, which may name anything). The order below is the architecture
(docs/architecture.md draws it); every module's imports — relative, absolute, inside functions, through
``importlib.import_module`` or a ``'prunekit.x.y'`` string naming a module — must point to its own layer or below.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prunekit"
LAYERS = ["base", "core", "groups", "adapters", "ranking", "budget", "engine", "strategies", "native", "io", "models",
          "methods", "data", "recipe", "train", "run", "ablation", "tasks", "serve", "cli"]
TOP_LEVEL = {"cli": "cli", "__main__": "cli", "__init__": None}  # other top-level modules are the foundation
MAX_LINES = 400
MAX_PHASE_LINES = 300  # prunekit/run/: one phase, one job
CLI_MAY_IMPORT = {"run", "errors", "recipe", "ablation", "tasks", "serve", "cli"}  # the phases, the user's input


def modules() -> list[tuple[str, Path]]:
    """(dotted name under prunekit, file) of every module, the built-in strategies as ``strategies.*``."""
    out = [(".".join(p.relative_to(PACKAGE).with_suffix("").parts), p) for p in sorted(PACKAGE.rglob("*.py"))]
    return out + [(f"strategies.{p.stem}", p) for p in sorted((ROOT / "strategies").glob("*.py"))]


def layer_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    if len(parts) == 1:
        return TOP_LEVEL.get(parts[0], "base")
    return parts[0]


def imported_modules(path: Path, dotted: str) -> set[str]:
    """prunekit modules (dotted, without ``prunekit.``) that the file imports or names."""
    parts = dotted.split(".")
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names = {n for n, _ in modules()}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                if node.module:
                    found.add(".".join(base + node.module.split(".")))
                else:
                    found.update(".".join(base + [a.name]) for a in node.names)
            elif node.module and node.module.startswith("prunekit."):
                found.add(node.module.removeprefix("prunekit."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("prunekit.") for a in node.names if a.name.startswith("prunekit."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("prunekit."):
            name = node.value.removeprefix("prunekit.")
            if name in names or f"{name}.__init__" in names:  # a string naming a module (registry built-ins ...)
                found.add(name)
    return {m for m in found if m}


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders | {"base", "cli", "strategies"} == set(LAYERS), sorted(folders ^ (set(LAYERS) - {"base", "cli"}))


@pytest.mark.parametrize("dotted, path", modules(), ids=[n for n, _ in modules()])
def test_a_module_imports_nothing_above_its_layer(dotted, path):
    own = layer_of(dotted)
    if own is None:
        return  # the package's public surface
    above = sorted({m for m in imported_modules(path, dotted)
                    if layer_of(m) is not None and LAYERS.index(layer_of(m)) > LAYERS.index(own)})
    assert not above, f"prunekit.{dotted} ({own}) imports {above}, above it"


def test_the_parser_sees_relative_absolute_lazy_and_named_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from ..adapters.layers import x\nfrom .. import config\nimport prunekit.cli\n"
                 "def f():\n    from prunekit.run import y\n    importlib.import_module('prunekit.train.trainer')\n"
                 "BUILTINS = ('prunekit.groups.channels', 'prunekit.not_a_module', 'prunekit.group_sources')\n")
    assert imported_modules(f, "core.m") == {"adapters.layers", "config", "cli", "run", "train.trainer",
                                             "groups.channels"}


def test_the_core_knows_no_adapters_recipes_cli_or_run_directories():
    """No name, attribute or name-like string of the core says adapter, recipe, cli or run dir (messages may)."""
    words = ("adapter", "recipe", "rundir", "run_dir", "cli")
    for dotted, path in modules():
        if layer_of(dotted) != "core":
            continue
        tree = ast.parse(path.read_text())
        said = [getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "name", None) or
                (n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier()
                 else None)
                for n in ast.walk(tree) if isinstance(n, (ast.Name, ast.Attribute, ast.FunctionDef, ast.ClassDef,
                                                          ast.Constant))]
        hits = sorted({w for w in said if isinstance(w, str) and any(k in w.lower() for k in words)})
        assert not hits, f"prunekit.{dotted} names {hits}"


# Modules still past the limit, to be split along their seams; the list may only shrink.
TOO_LONG: set[str] = set()


def test_no_module_is_past_400_lines_but_the_listed_ones():
    long = {dotted for dotted, path in modules() if len(path.read_text().splitlines()) > MAX_LINES}
    assert long - TOO_LONG == set(), f"split these along their seams: {sorted(long - TOO_LONG)}"
    assert TOO_LONG - long == set(), f"short now, take them off TOO_LONG: {sorted(TOO_LONG - long)}"


@pytest.mark.parametrize("dotted, path", [m for m in modules() if m[0].startswith("run.")], ids=lambda v: str(v))
def test_a_phase_is_short_and_only_the_pipeline_strings_the_phases_together(dotted, path):
    assert len(path.read_text().splitlines()) <= MAX_PHASE_LINES, f"prunekit.{dotted}: one phase, one job"
    if dotted not in ("run.__init__", "run.pipeline"):
        assert "run.pipeline" not in imported_modules(path, dotted), f"{dotted} imports the pipeline; pass its parts"


def test_the_cli_imports_only_the_phases_and_the_front_end():
    imported = {m.split(".")[0] for dotted, path in modules() if dotted.startswith("cli.")
                for m in imported_modules(path, dotted)}
    assert "run" in imported and imported <= CLI_MAY_IMPORT, f"cli/ imports {sorted(imported - CLI_MAY_IMPORT)}"


def test_the_architecture_page_draws_every_layer_and_names_only_real_files():
    """docs/architecture.md's picture: every layer folder appears, and every folder or file it names exists."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    picture = page.split("```")[1]
    folders = set(re.findall(r"^ ([a-z_]+)/", picture, re.M))
    assert folders >= set(LAYERS) - {"base", "cli"}, sorted(set(LAYERS) - {"base", "cli"} - folders)
    for folder in folders:
        assert (PACKAGE / folder).is_dir() or (ROOT / folder).is_dir(), f"{folder}/ does not exist"
    current = ""
    for line in picture.splitlines():
        m = re.match(r"^ ([a-z_]+)/", line)
        if m:
            current = m.group(1)
        for name in re.findall(r"\b([a-z_]+\.py)\b", line):
            where = [PACKAGE / name, ROOT / current / name, *(PACKAGE / current).rglob(name)]
            assert any(p.is_file() for p in where), f"{name} (under {current}/) does not exist"
