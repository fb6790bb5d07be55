"""What a user saved with the prunekit of before the house's move (aaccba0: the flat layout, no module versions in
its files) still loads: pruned models reproduce their outputs in a new process, and a finished TINA run is read,
re-measured, exported and left untouched by ``--resume`` (the files: tests/data/make_before_the_move.py)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunekit.cli import main

pytestmark = pytest.mark.integration

OLD = Path(__file__).parent / "data" / "before_the_move"

RELOAD = """
import sys, timm, torch
from safetensors.torch import load_file
sys.path.insert(0, {tests!r})
from conftest import small_cnn, tiny_vit
import prunekit as pk

builders = {{"vit": tiny_vit, "cnn": small_cnn,
            "mobilenetv3": lambda: timm.create_model("mobilenetv3_small_050", num_classes=10)}}
refs = load_file({outputs!r})
for name, build in builders.items():
    model = pk.load_pruned({old!r} + "/" + name, build()).eval()
    with torch.no_grad():
        out = model(refs[name + ".input"])
    torch.testing.assert_close(out, refs[name + ".output"], rtol=1e-5, atol=1e-5)
    print(name, sum(v.numel() for v in model.state_dict().values()))
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_pruned_models_saved_before_the_move_reproduce_their_outputs_in_a_new_process():
    code = RELOAD.format(tests=str(Path(__file__).parent), outputs=str(OLD / "outputs.safetensors"), old=str(OLD))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    params = dict(line.split() for line in res.stdout.splitlines())
    for name in params:  # the structure is the saved one: as many values as the file holds
        saved = json.loads((OLD / name / "prunekit.json").read_text())["params"]
        assert int(params[name]) == saved, (name, params[name], saved)
    assert set(params) == {"vit", "cnn", "mobilenetv3"}


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "tiny"
    shutil.copytree(OLD / "tiny", run)
    return run


def test_a_run_from_before_the_move_is_re_measured_as_it_recorded(old_run):
    res = invoke("eval", old_run, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output.strip().splitlines()[-1])
    assert result["match"] is True, result


def test_a_run_from_before_the_move_is_inspected_and_resumed_without_a_change(old_run):
    before = digest(old_run)
    res = invoke("inspect", old_run)
    assert res.exit_code == 0, res.output
    assert "3/4" in res.output  # cycle 2 kept 3 of the 4 adapters
    res = invoke("run", "--resume", old_run)
    assert res.exit_code == 0, res.output
    assert "already finished" in res.output
    assert digest(old_run) == before


def test_a_run_from_before_the_move_exports(old_run, tmp_path):
    res = invoke("export", old_run, "--format", "torchscript", "--out", tmp_path / "model.pt")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "model.pt").stat().st_size > 0
