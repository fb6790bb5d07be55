"""docs/serving.md runs as written: its bash blocks in order (training commands made short and given one shared
random backbone checkpoint instead of the cached one; the server started on a free port, which the curl lines use),
then its Python block on the runs they wrote."""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from task_runs import first_line
from test_docs import DOCS, bash_commands, python_blocks

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

SHORT = ["--set", "train.epochs=1", "--set", "train.warmup_epochs=0", "--set", "train.max_steps_per_epoch=2",
         "--set", "data.limit_val=48", "--set", "model.pretrain=null", "--set", "model.allow_random_backbone=false"]
NOT_RUN = {"pip install 'prunekit[serve]'": "the test runs the prunekit it imports, with the [dev] extras"}


def quickstart_backbone(path: Path) -> Path:
    """A random checkpoint of the quickstart's ViT: the runs share it as users share the cached one."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3,
                            num_classes=10)
    save_file(net.state_dict(), str(path))
    return path


def digit_folders(root: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    count: dict[int, int] = {}
    for image, label in zip(digits.images[:40], digits.target[:40]):
        k = count.setdefault(int(label), 0)
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / str(label) / f"{k}.png")
        count[int(label)] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serving_page_runs_as_written(tmp_path, monkeypatch, capsys):
    from prunekit.cli import main

    text = (DOCS / "serving.md").read_text()
    commands = bash_commands(text)
    assert set(NOT_RUN) <= set(commands)
    monkeypatch.chdir(tmp_path)
    backbone = quickstart_backbone(tmp_path / "backbone.safetensors")
    digit_folders(tmp_path / "my_digits")
    env = {k: v for k, v in os.environ.items() if k != "PRUNEKIT_SERVE_TOKEN"}
    port, server, outputs = free_port(), None, {}
    try:
        for command in commands:
            if command in NOT_RUN:
                continue
            argv = shlex.split(command)
            if argv[0] == "export":
                name, value = argv[1].split("=", 1)
                env[name] = value
                continue
            if argv[:2] == ["prunekit", "serve"]:
                args = [a if a != "8000" else str(port) for a in argv[2:]]
                server = subprocess.Popen([sys.executable, "-m", "prunekit", "serve", *args, "--log-level",
                                           "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
                first = first_line(server)
                assert first.startswith("serving 2 tasks (digits, low)"), (first, server.poll())
                continue
            if argv[0] == "curl":
                res = subprocess.run(command.replace("localhost:8000", f"localhost:{port}"), shell=True,
                                     capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
                assert res.returncode == 0, (command, res.stderr)
                outputs[command] = json.loads(res.stdout)
                continue
            assert argv[0] == "prunekit", f"the test does not know how to run {command!r}"
            extra = SHORT + ["--set", f"model.checkpoint={backbone}"] if argv[1] == "run" else []
            res = CliRunner().invoke(main, argv[1:] + extra)
            assert res.exit_code == 0, f"{command}\n{res.output}\n{res.exception!r}"
            outputs[command] = res.output
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    answers = list(outputs.values())
    health, listed, raw, form, added, removed = answers[-6:]
    assert health["status"] == "ok" and [t["name"] for t in listed["tasks"]] == ["digits", "low"]
    assert raw["task"] == "digits" and len(raw["top"]) == 3
    assert form["task"] == "low" and {t["name"] for t in form["top"]} == {"0", "1", "2", "3", "4"}
    assert added["name"] == "inverted" and removed == {"removed": "inverted", "tasks": ["digits", "low"]}
    predicted = next(out for c, out in outputs.items() if c.startswith("prunekit predict"))
    assert "digits: 40 images" in predicted and (tmp_path / "table.csv").is_file()

    capsys.readouterr()
    namespace: dict = {}
    exec(compile(python_blocks(DOCS / "serving.md")[0], "serving.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "torch.Size([5])" and lines[1] == "torch.Size([4, 5])"
    assert lines[2].startswith("[(") and lines[3] == "['digits', 'low', 'inv']"
