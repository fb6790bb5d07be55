"""Install anywhere: the wheel holds every subpackage, the built-in strategies and recipes, and runs from any folder.

The wheel is built from a copy of the checkout (``pip wheel`` writes ``build/`` next to the sources), installed into
a fresh virtual environment that reaches this interpreter's packages (torch, timm, ...; whether this interpreter is a
virtual environment or not) but not its prunekit, and run
from an empty temporary folder with no ``PYTHONPATH``. Skipped with the reason when this Python cannot build wheels.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs", "__pycache__", ".pytest_cache",
                                 ".hypothesis", "results-quick", ".ruff_cache")


def expected_files() -> set[str]:
    """What the wheel must hold: every ``prunekit/**/__init__.py``, every strategy module and every recipe."""
    inits = {p.relative_to(ROOT).as_posix() for p in (ROOT / "prunekit").rglob("__init__.py")}
    strategies = {f"prunekit/strategies/{p.name}" for p in (ROOT / "strategies").glob("*.py")}
    recipes = {f"prunekit/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    return inits | strategies | recipes


def test_pyproject_lists_every_subpackage():
    """A subpackage missing from ``packages`` is missing from the wheel (``ModuleNotFoundError`` once installed)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "prunekit").rglob("__init__.py")}
    assert tree - set(tool["packages"]) == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert tool["package-dir"] == {"prunekit.strategies": "strategies", "prunekit.recipes": "recipes"}
    assert {"prunekit.strategies", "prunekit.recipes"} <= set(tool["packages"])
    assert tool["package-data"]["prunekit.recipes"] == ["*.yaml"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp / "dist"), str(src)], capture_output=True, text=True, env=clean_env(),
                          timeout=600)
    if proc.returncode != 0:
        missing = ("No module named", "BackendUnavailable", "invalid command 'bdist_wheel'", "Cannot import")
        if any(m in proc.stderr for m in missing):
            pytest.skip(f"this Python cannot build wheels (setuptools / wheel missing): {proc.stderr.strip()[-300:]}")
        pytest.fail(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (built,) = (tmp / "dist").glob("prunekit-*.whl")
    return built


def site_dirs() -> list[str]:
    """The running interpreter's package folders: a venv's own (and its base's, with system site packages), or the
    base interpreter's. ``venv --system-site-packages`` would reach the *base* interpreter's, where a venv's torch is
    not."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    """A fresh virtual environment (outside the checkout) with the wheel installed; returns its bin/ folder.

    It reaches this interpreter's packages (torch, timm, ...) through a ``.pth`` file listing their folders. A
    ``.pth`` line adds a folder to ``sys.path`` without running the ``.pth`` files inside it, so an editable install
    of this checkout there stays out of reach: ``prunekit`` can only come from the wheel."""
    env_dir = wheel.parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=clean_env(), timeout=60).stdout.strip()
    (Path(purelib) / "_reuse_test_packages.pth").write_text("\n".join(site_dirs()) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, env=clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env_dir / "bin"


def run_in(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**clean_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.wheel
def test_wheel_holds_every_package_strategy_and_recipe(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert expected_files() - names == set()
    assert not [n for n in names if n.startswith(("strategies/", "recipes/", "tests/"))], "top-level leftovers"
    entry_points = next(zipfile.Path(wheel, n).read_text() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tina = prunekit.strategies.tina" in entry_points


@pytest.mark.wheel
def test_installed_wheel_runs_the_quickstart_from_any_folder(venv: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    where = run_in(venv, work, venv / "python", "-c", "import prunekit, prunekit.methods, prunekit.strategies; "
                   "print(prunekit.__file__); print(prunekit.strategies.__file__)")
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(venv.parent.resolve()), f"{line} is not the installed wheel"

    dry = run_in(venv, work, venv / "prunekit", "run", "quickstart", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "quickstart: recipe valid" in dry.stdout and "widths_per_cycle" in dry.stdout
    assert run_in(venv, work, venv / "prunekit", "run", "quickstart.yaml", "--dry-run").returncode == 0
    listed = run_in(venv, work, venv / "prunekit", "list", "recipes")
    assert "quickstart.yaml" in listed.stdout and "pretrain_mnist5k.yaml" in listed.stdout, listed.stdout
    assert "tina " in run_in(venv, work, venv / "prunekit", "list", "strategies").stdout

    # quickstart's `model.pretrain: pretrain_mnist5k.yaml` resolves inside the package: the pretraining recipe is
    # found and checked, then an unreachable sigma_target stops the run before anything is trained or written
    pre = run_in(venv, work, venv / "prunekit", "run", "quickstart", "--set",
                 f"model.checkpoint={tmp_path / 'absent.safetensors'}", "--set", "strategy.sigma_target=100000")
    assert pre.returncode == 2, pre.stdout + pre.stderr
    assert "error: strategy.sigma_target: 100000" in pre.stderr and "no such recipe" not in pre.stderr
    assert not any(work.iterdir()), f"written: {sorted(p.name for p in work.iterdir())}"
