"""Never lose a user's data: every command that must not delete, replace or mix files, through the command line.

One table, one test (the pattern of test_bad_input.py). The workspace holds finished runs, an unfinished run without
``resume.pt``, two unfinished runs with one (seeds 0 and 1), a run with a user's file inside, a project folder that
is no run (``recipe.resolved.yaml``, ``thesis.tex``, ``data/``) and checkpoint files. Each row runs ``prunekit ...``
and asserts the exit code, the message, and that every file that existed before is byte-for-byte unchanged after
(mtimes of files and folders too), except the ones the row is meant to replace. Rows that need a fresh copy of a
run build it under ``cases/<row>/`` before the snapshot. Read-only and full file systems are real mounts in a private
mount namespace (``unshare -m``; skipped where that is not allowed).

Below the table: two processes on one run directory (the second gets ``RunLockedError``, the first finishes with
consistent outputs), and a lock left by a SIGKILLed run being taken over.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from prunekit.cli import main
from prunekit.train.resume import STATE_FILE
from prunekit.io.rundir import MARKER, RunDir
from prunekit.io.files import save_safetensors, written_by_prunekit
from prunekit.io.runlock import LOCK_FILE, RunLockedError, holder_of

from conftest import snapshot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "vit_tiny_patch16_224", "img_size": 16, "allow_random_backbone": True,
              "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "avg"}}


def tiny(ws: Path, **sections: Any) -> dict[str, Any]:
    """TINA sigma 4 -> 16 (3 cycles of one step) on 16 px digits, run directories under ``ws/runs``."""
    r = {"name": "tiny", "model": dict(TINY_MODEL), "method": {"name": "adapters", "sigma": 4},
         "strategy": {"name": "tina", "rho": 0.5, "sigma_target": 16},
         "data": {"name": "digits", "limit_train": 32, "limit_val": 16},
         "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "max_steps_per_epoch": 1, "lr": 1e-2},
         "output": {"dir": str(ws / "runs"), "plot": False}}
    for k, v in sections.items():
        r[k] = {**r[k], **v} if isinstance(v, dict) and isinstance(r.get(k), dict) and k != "method" else v
    return r


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


class Stop(Exception):
    """Stops a fixture run after training, before DONE (as a kill would): its resume.pt stays."""


def unfinished_run(recipe: Path, out: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        def stop(*args, **kwargs):
            raise Stop()

        mp.setattr("prunekit.run.record.write_report", stop)
        res = cli("run", recipe, "--out", out, "--quiet")
    assert isinstance(res.exception, Stop), res.output
    assert (out / STATE_FILE).is_file() and not (out / "DONE").exists()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    write_recipe(ws / "recipe.yaml", tiny(ws))
    for name in ("finished", "other", "withuser"):
        recipe = write_recipe(ws / "recipes" / f"{name}.yaml", tiny(ws, name=name))
        res = cli("run", recipe, "--quiet")
        assert res.exit_code == 0, res.output
    (ws / "runs" / "withuser" / "notes.txt").write_text("my notes about this run\n")

    # a run that trained all its cycles without resume.pt and stopped before DONE
    recipe = write_recipe(ws / "recipes" / "nostate.yaml", tiny(ws, name="nostate", output={"save_state": False}))
    assert cli("run", recipe, "--quiet").exit_code == 0
    (ws / "runs" / "nostate" / "DONE").unlink()

    for seed in (0, 1):  # unfinished runs with resume.pt, same structure, different seeds
        recipe = write_recipe(ws / "recipes" / f"seed{seed}.yaml", tiny(ws, name=f"seed{seed}", train={"seed": seed}))
        unfinished_run(recipe, ws / "unfinished" / f"seed{seed}")

    project = ws / "project"  # not a run: a user's folder that happens to hold a recipe.resolved.yaml
    (project / "data").mkdir(parents=True)
    shutil.copy(ws / "runs" / "finished" / "recipe.resolved.yaml", project / "recipe.resolved.yaml")
    (project / "thesis.tex").write_text("\\documentclass{article}\n")
    (project / "data" / "points.csv").write_text("x,y\n1,2\n")

    save_file({"w": torch.ones(3)}, str(ws / "foreign.safetensors"))  # the user's file, no prunekit mark
    (ws / "cases").mkdir()
    return ws


# -- per-row set-ups (before the snapshot) --------------------------------------------------------------------------

def copy_unfinished(ws: Path, case: Path) -> Path:
    run = case / "run"
    shutil.copytree(ws / "unfinished" / "seed0", run)
    return run


def resume_pt_of_other_seed(ws: Path, case: Path) -> None:
    run = copy_unfinished(ws, case)
    shutil.copy(ws / "unfinished" / "seed1" / STATE_FILE, run / STATE_FILE)


def edited_resolved_recipe(ws: Path, case: Path) -> None:
    run = copy_unfinished(ws, case)
    path = run / "recipe.resolved.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["train"]["lr"] = 0.5
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def deleted_metrics(ws: Path, case: Path) -> None:
    (copy_unfinished(ws, case) / "metrics.jsonl").unlink()


def prunekit_checkpoint(ws: Path, case: Path) -> None:
    save_safetensors(case / "ckpt.safetensors", {"w": torch.zeros(2)}, {"recipe": "earlier"})


def foreign_checkpoint(ws: Path, case: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(case / "ckpt.safetensors"))


def shadowing_package(ws: Path, case: Path) -> None:
    pkg = case / "cwd" / "strategies"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(case / 'MARKER')!r}, 'w').write('user code ran')\n")


def shadowing_module(ws: Path, case: Path) -> None:
    (case / "cwd").mkdir()
    (case / "cwd" / "strategies.py").write_text(f"open({str(case / 'MARKER')!r}, 'w').write('user code ran')\n")


def replaced_checkpoint(case: Path, output: str) -> None:
    path = case / "ckpt.safetensors"
    assert written_by_prunekit(path)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["recipe"] == "tiny" and "w" not in f.keys(), "not replaced by the run's weights"


def no_stray_files(case: Path, output: str) -> None:
    listing = output.split("@@listing", 1)[1].split()
    assert not [p for p in listing if ".tmp" in p], f"temporary files left: {listing}"
    assert any(p.endswith(MARKER) for p in listing), listing  # it failed mid-run, after creating the run


@dataclass
class Row:
    id: str
    args: list[str]  # formatted with {ws}, {case}, {recipe}, {out}, {tmp}
    code: int
    expect: list[str]  # substrings of the output, formatted like args
    reject: list[str] = field(default_factory=list)  # substrings that must not appear
    setup: Callable[[Path, Path], None] | None = None  # (workspace, case folder), before the snapshot
    may_change: list[str] = field(default_factory=list)  # workspace files the row is meant to replace
    sandbox: str | None = None  # "readonly" / "fulldisk": a subprocess in a mount namespace; "cwd": a subprocess in
    absent: list[str] = field(default_factory=list)  # {case}/cwd; paths that must not exist afterwards
    check: Callable[[Path, str], None] | None = None  # (case folder, output) -> asserts


NOT_CHANGED = "nothing was changed"
ROWS = [
    # --resume keeps everything when there is nothing to resume from, or when the folder is no prunekit run
    Row("resume-without-resume-pt", ["run", "--resume", "{ws}/runs/nostate"], 2,
        ["--resume: {ws}/runs/nostate has no resume.pt", "3 cycles finished (last: cycle 2)",
         "not finished (no DONE)", NOT_CHANGED, "--overwrite"]),
    Row("resume-non-run-folder", ["run", "--resume", "{ws}/project"], 2,
        ["--resume: {ws}/project is not a prunekit run directory: it holds data/, recipe.resolved.yaml, thesis.tex",
         "no .prunekit-run.json", NOT_CHANGED]),
    Row("resume-finished-run", ["run", "--resume", "{ws}/runs/finished"], 0, ["already finished", "nothing to resume"]),
    # --overwrite replaces only a prunekit run directory, and only the files prunekit wrote
    Row("overwrite-non-run-folder", ["run", "{recipe}", "--out", "{ws}/project", "--overwrite"], 2,
        ["output: {ws}/project is not a prunekit run directory: it holds data/, recipe.resolved.yaml, thesis.tex",
         NOT_CHANGED, "--overwrite only replaces prunekit run directories"]),
    Row("non-run-folder-no-overwrite", ["run", "{recipe}", "--out", "{ws}/project"], 2,
        ["output: {ws}/project is not a prunekit run directory", NOT_CHANGED],
        reject=["unfinished run", "Pass --overwrite"]),
    Row("overwrite-run-with-user-file", ["run", "{recipe}", "--out", "{ws}/runs/withuser", "--overwrite"], 2,
        ["output: {ws}/runs/withuser holds files prunekit did not write: notes.txt", NOT_CHANGED]),
    Row("unfinished-run-no-overwrite", ["run", "{recipe}", "--out", "{ws}/unfinished/seed0"], 2,
        ["already holds an unfinished run (3 cycles finished", "prunekit run --resume {ws}/unfinished/seed0"]),
    # run names stay one folder inside output.dir
    Row("run-name-dot", ["run", "{recipe}", "--set", "output.run_name=.", "--overwrite"], 2,
        ["output.run_name: expected one folder name inside output.dir", "got '.'"]),
    Row("run-name-dotdot", ["run", "{recipe}", "--set", "output.run_name=..", "--overwrite"], 2,
        ["output.run_name: expected one folder name inside output.dir", "got '..'"]),
    Row("run-name-escaping", ["run", "{recipe}", "--set", "output.run_name=../../escaped"], 2,
        ["output.run_name: expected one folder name", "got '../../escaped'"], absent=["{ws}/../escaped"]),
    Row("run-name-absolute", ["run", "{recipe}", "--set", "output.run_name={tmp}/absolute", "--overwrite"], 2,
        ["output.run_name: expected one folder name", "got '{tmp}/absolute'"], absent=["{tmp}/absolute"]),
    Row("name-dotdot", ["run", "{recipe}", "--set", "name=..", "--overwrite"], 2,
        ["name: expected one folder name inside output.dir", "got '..'"]),
    # output.save_checkpoint replaces only a file prunekit wrote, unless output.replace_checkpoint
    Row("checkpoint-onto-foreign-file",
        ["run", "{recipe}", "--set", "output.save_checkpoint={ws}/foreign.safetensors", "--out", "{out}"], 2,
        ["output.save_checkpoint: '{ws}/foreign.safetensors' exists and prunekit did not write it", NOT_CHANGED,
         "output.replace_checkpoint: true"], absent=["{out}"]),
    Row("checkpoint-onto-prunekit-file",
        ["run", "{recipe}", "--set", "output.save_checkpoint={case}/ckpt.safetensors", "--out", "{out}", "--quiet"],
        0, ["run directory: {out}"], setup=prunekit_checkpoint, may_change=["{case}/ckpt.safetensors"],
        check=replaced_checkpoint),
    Row("checkpoint-replace-foreign-when-told",
        ["run", "{recipe}", "--set", "output.save_checkpoint={case}/ckpt.safetensors", "--set",
         "output.replace_checkpoint=true", "--out", "{out}", "--quiet"],
        0, ["run directory: {out}"], setup=foreign_checkpoint, may_change=["{case}/ckpt.safetensors"],
        check=replaced_checkpoint),
    # --resume refuses a state that belongs to another run or recipe, or a metrics.jsonl that does not fit it
    Row("resume-pt-of-another-seed", ["run", "--resume", "{case}/run"], 2,
        ["--resume: {case}/run/resume.pt does not belong to this run", "copied from another run",
         "train.seed: 1 in resume.pt, 0 in recipe.resolved.yaml", NOT_CHANGED], setup=resume_pt_of_other_seed),
    Row("resume-edited-recipe", ["run", "--resume", "{case}/run"], 2,
        ["does not belong to this run: its recipe differs from recipe.resolved.yaml",
         "train.lr: 0.01 in resume.pt, 0.5 in recipe.resolved.yaml", NOT_CHANGED],
        reject=["copied from another run"], setup=edited_resolved_recipe),
    Row("resume-metrics-deleted", ["run", "--resume", "{case}/run"], 2,
        ["--resume: {case}/run/metrics.jsonl is missing", NOT_CHANGED], setup=deleted_metrics),
    # a read-only --out and a full disk: one error line, no temporary files
    Row("read-only-out", ["run", "{recipe}", "--out", "{case}/mnt/run"], 2,
        ["output: cannot create the run directory {case}/mnt/run", "not writable", NOT_CHANGED],
        sandbox="readonly", absent=["{case}/mnt/run"]),
    Row("full-disk-resume-state", ["run", "{recipe}", "--out", "{case}/mnt/run"], 2,
        ["output: cannot write {case}/mnt/run/resume.pt: No space left on device"], sandbox="fulldisk",
        check=no_stray_files),
    Row("full-disk-no-resume-state", ["run", "{recipe}", "--set", "output.save_state=false", "--out",
                                      "{case}/mnt/run"], 2,
        ["output: cannot write {case}/mnt/run/", "No space left on device"], sandbox="fulldisk",
        check=no_stray_files),
    # a `strategies` package or module in the working directory is never imported
    Row("cwd-strategies-package", ["list", "strategies"], 0, ["tina ", "vanilla_l1", "local_l1"],
        setup=shadowing_package, sandbox="cwd", absent=["{case}/MARKER"]),
    Row("cwd-strategies-module", ["list", "strategies"], 0, ["tina ", "global_activation"],
        setup=shadowing_module, sandbox="cwd", absent=["{case}/MARKER"]),
    Row("cwd-strategies-module-run", ["run", "{recipe}", "--dry-run"], 0, ["recipe valid", "tina"],
        setup=shadowing_module, sandbox="cwd", absent=["{case}/MARKER"]),
]

FULL_DISK_KB = 32  # room for the run directory's first files, not for resume.pt or every cycle's adapters


def sandboxed(row: Row, args: list[str], case: Path) -> list[str]:
    """The command line of a row that needs a mount: a private mount namespace, so nothing leaks to this system."""
    prunekit = [sys.executable, "-m", "prunekit", *args]
    mnt = case / "mnt"
    if row.sandbox == "readonly":
        script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" || exit 97; exec "$@"'
    else:
        script = (f'mount -t tmpfs -o size={FULL_DISK_KB}k tmpfs "$0" || exit 97; "$@"; rc=$?; echo "@@listing"; '
                  '(cd "$0" && find . -mindepth 1 | sort); exit $rc')
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    return [*unshare, "sh", "-c", script, str(mnt), *prunekit]


def invoke(row: Row, args: list[str], case: Path) -> tuple[int, str]:
    """Exit code and output (stdout + stderr) of ``prunekit ARGS``, in this process or a fresh one."""
    if row.sandbox is None:
        res = CliRunner().invoke(main, args)
        output = res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            output += "".join(traceback.format_exception(res.exception))
        return res.exit_code, output
    if row.sandbox == "cwd":
        cmd, cwd = [sys.executable, "-m", "prunekit", *args], case / "cwd"
    else:
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) for a private mount namespace")
        cmd, cwd = sandboxed(row, args, case), case
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)
    if proc.returncode == 97 or "unshare: " in proc.stderr:
        pytest.skip(f"cannot mount in a private namespace here: {proc.stderr.strip()[:200]}")
    return proc.returncode, proc.stdout + proc.stderr




def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return sorted((before.keys() ^ after.keys()) | {k for k in before.keys() & after.keys() if before[k] != after[k]})


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_nothing_a_user_made_is_lost(row: Row, workspace: Path, tmp_path: Path):
    case = workspace / "cases" / row.id
    case.mkdir()
    fmt = {"ws": workspace, "case": case, "recipe": workspace / "recipe.yaml", "out": tmp_path / "out",
           "tmp": tmp_path}
    if row.setup is not None:
        row.setup(workspace, case)
    if row.sandbox in ("readonly", "fulldisk"):
        (case / "mnt").mkdir()  # the mount point; what is mounted on it stays in the sandbox's namespace
    args = [a.format(**fmt) for a in row.args]
    before = snapshot(workspace)

    code, output = invoke(row, args, case)

    assert code == row.code, f"exit code {code}, expected {row.code}:\n{output}"
    assert "Traceback" not in output, output
    for part in row.expect:
        assert part.format(**fmt) in output, f"{part.format(**fmt)!r} not in:\n{output}"
    for part in row.reject:
        assert part.format(**fmt) not in output, f"{part.format(**fmt)!r} in:\n{output}"
    replaced = [Path(p.format(**fmt)).relative_to(workspace) for p in row.may_change]
    allowed = {str(p) for p in replaced} | {f"{p.parent}/" for p in replaced}  # a rename changes its folder's mtime
    changed = [c for c in changes(before, snapshot(workspace)) if c not in allowed]
    assert not changed, f"changed: {changed}"
    for path in row.absent:
        assert not Path(path.format(**fmt)).exists(), path.format(**fmt)
    if row.check is not None:
        row.check(case, output)


# -- two writers --------------------------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    # `prunekit run` that stops after the first resume.pt until the file GO exists (READY says it got there)
    import sys, time
    from pathlib import Path
    import prunekit.run.resuming as resuming
    ready, go = Path(sys.argv[1]), Path(sys.argv[2])
    original = resuming.save_state
    def save_state(path, state):
        n = original(path, state)
        if not ready.exists():
            ready.write_text("ready")
            deadline = time.time() + 300
            while not go.exists() and time.time() < deadline:
                time.sleep(0.05)
        return n
    resuming.save_state = save_state
    from prunekit.cli import main
    main(sys.argv[3:], prog_name="prunekit")
""")


def start_held_run(tmp: Path, recipe: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """A real ``prunekit run`` in a subprocess, paused after its first epoch (lock held, resume.pt written)."""
    (tmp / "hold.py").write_text(HOLD)
    ready, go = tmp / "READY", tmp / "GO"
    proc = subprocess.Popen([sys.executable, str(tmp / "hold.py"), str(ready), str(go), "run", str(recipe), "--out",
                             str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ready.exists():
        assert proc.poll() is None, f"the run ended early:\n{proc.communicate()[1]}"
        assert time.time() < deadline, "the run did not reach its first epoch"
        time.sleep(0.05)
    return proc, go


def test_a_second_writer_is_refused_and_the_first_finishes(tmp_path: Path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny(tmp_path, train={"max_steps_per_epoch": 2, "epochs": 2}))
    out = tmp_path / "run"
    proc, go = start_held_run(tmp_path, recipe, out)
    try:
        before = snapshot(out)
        for args in (["run", recipe, "--out", out, "--overwrite"], ["run", "--resume", out],
                     ["run", recipe, "--out", out]):
            res = cli(*args)
            assert res.exit_code == 2, res.output
            assert f"output: {out} is locked: another prunekit process is writing it (pid {proc.pid} on host" \
                   in res.output, res.output
            assert NOT_CHANGED in res.output
        with pytest.raises(RunLockedError) as e:  # the same through the API, as a named error
            RunDir(out).create(overwrite=True)
        assert e.value.holder["pid"] == proc.pid
        assert holder_of(out)["pid"] == proc.pid
        assert snapshot(out) == before, "a refused writer changed the run directory"
    finally:
        go.write_text("go")
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["cycle"] for r in records if r["type"] == "cycle"] == [0, 1, 2]
    assert [(r["cycle"], r["epoch"]) for r in records if r["type"] == "epoch"] == \
        [(c, e) for c in range(3) for e in range(2)]  # one writer: every epoch once, in order
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [f"cycle_{c}.safetensors" for c in range(3)]
    assert (out / "DONE").is_file() and not (out / STATE_FILE).exists()
    assert (out / LOCK_FILE).read_text() == "" and holder_of(out) is None  # released cleanly


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny(tmp_path))
    out = tmp_path / "run"
    proc, _ = start_held_run(tmp_path, recipe, out)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    stale = json.loads((out / LOCK_FILE).read_text())
    assert stale["pid"] == proc.pid  # the record stays; the kernel released the flock
    assert holder_of(out) is None

    res = cli("run", "--resume", out)
    assert res.exit_code == 0, res.output
    assert f"took over the lock of a writer that no longer runs (pid {proc.pid} on host" in res.output
    assert (out / "DONE").is_file()
    assert (out / LOCK_FILE).read_text() == ""
    cycles = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["cycle"] for r in cycles if r["type"] == "cycle"] == [0, 1, 2]


def test_overwrite_removes_only_the_manifest_and_keeps_the_folder(tmp_path: Path):
    """--overwrite of a run directory: prunekit's files go (temporary files of a killed writer too), nothing else."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny(tmp_path))
    out = tmp_path / "run"
    assert cli("run", recipe, "--out", out, "--quiet").exit_code == 0
    first = json.loads((out / MARKER).read_text())
    assert set(first["files"]) >= {"recipe.resolved.yaml", "metrics.jsonl", "plan.json", "report.md", "DONE",
                                   "adapters/cycle_0.safetensors", STATE_FILE}
    (out / ".plan.json.tmp12345").write_text("left by a killed writer")
    res = cli("run", recipe, "--out", out, "--overwrite", "--quiet", "--set", "train.seed=5")
    assert res.exit_code == 0, res.output
    second = json.loads((out / MARKER).read_text())
    assert second["run_id"] != first["run_id"]
    assert not (out / ".plan.json.tmp12345").exists()
    assert yaml.safe_load((out / "recipe.resolved.yaml").read_text())["train"]["seed"] == 5


def test_a_checkpoint_path_taken_while_training_keeps_the_weights_in_the_run(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """A foreign file appearing at output.save_checkpoint mid-run is kept; the weights land in the run directory."""
    from safetensors.torch import load_file

    recipe = write_recipe(tmp_path / "r.yaml", tiny(tmp_path))
    out, dest = tmp_path / "run", tmp_path / "ck.safetensors"
    original = RunDir.save_plans

    def save_plans_then_take_the_path(self, plans):
        original(self, plans)
        if not dest.exists():
            save_file({"user": torch.ones(1)}, str(dest))

    monkeypatch.setattr(RunDir, "save_plans", save_plans_then_take_the_path)
    res = cli("run", recipe, "--set", f"output.save_checkpoint={dest}", "--out", out, "--quiet")
    assert res.exit_code == 2, res.output
    assert f"output.save_checkpoint: '{dest}' exists and prunekit did not write it" in res.output
    assert f"the weights were saved to {out / 'checkpoint.safetensors'} instead" in res.output
    assert load_file(str(dest)).keys() == {"user"}  # the user's file, untouched
    assert written_by_prunekit(out / "checkpoint.safetensors") and (out / "DONE").is_file()
