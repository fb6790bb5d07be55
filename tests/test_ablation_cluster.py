"""``prunekit ablate --launcher``: a 2 x 2 x 1 grid submitted as jobs through submitit's local executor (the SLURM
path, as processes here), one job killed mid-cell and resubmitted (it resumes from its resume.pt), two submitting
processes at once (no cell twice), ``--status``, ``--collect`` equal to the same grid run locally; and, with a stand-in
``sbatch`` on PATH, the sbatch script submitit writes for ``--launcher slurm`` from the file's ``cluster:`` section."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prunekit.ablation.jobs import CellJob, cell_state
from prunekit.errors import PrunekitError
from prunekit.io.runlock import RunLock, holder_of

from test_cli import tiny_recipe

pytestmark = pytest.mark.integration

CELLS = ["local_l1_oneshot__s16__seed0", "local_l1_oneshot__s8__seed0", "tina__s16__seed0"]  # tina s8: s16's cycle 1


def write_grid(tmp: Path, **cluster) -> Path:
    base = tiny_recipe(tmp, train={"epochs": 2, "warmup_epochs": 0}, data={"limit_train": 384, "limit_val": 64})
    spec = {"name": "grid", "base": base.name,
            "grid": {"strategies": ["tina", "local_l1_oneshot"], "sigma_targets": [8, 16], "seeds": [0],
                     "sigma0": 4, "vanilla_adapters": False},
            "plots": {"local_strategy": "local_l1_oneshot", "global_strategy": "tina"},
            "cluster": {"launcher": "submitit-local", "gpus_per_job": 0, "cpus_per_job": 1, **cluster}}
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def prunekit(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prunekit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def status(grid: Path, out: Path) -> dict[str, tuple[str, str]]:
    res = prunekit("ablate", grid, "--out", out, "--status")
    assert res.returncode == 0, res.stderr
    rows = [line.split(None, 2) for line in res.stdout.splitlines() if "__seed" in line.split(None, 1)[0]]
    return {r[0]: (r[1], r[2] if len(r) > 2 else "") for r in rows}


def until(predicate, timeout: float = 600, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def cluster_grid(tmp_path_factory):
    """Submit, kill tina's job once its first cycle is saved, let the others finish; then resubmit twice at once."""
    tmp = tmp_path_factory.mktemp("cluster")
    grid, out = write_grid(tmp), tmp / "out"
    before = status(grid, out)
    res = prunekit("ablate", grid, "--out", out)  # the file's cluster.launcher: submitit-local
    assert res.returncode == 0, res.stdout + res.stderr
    tina = out / "runs" / "tina__s16__seed0"

    def mid_cell():
        holder = holder_of(tina)
        return holder if holder and (tina / "resume.pt").is_file() and not (tina / "DONE").exists() else None

    holder = until(mid_cell, poll=0.05)
    os.kill(int(holder["pid"]), signal.SIGKILL)

    def settled():
        now = status(grid, out)
        return now if now["tina__s16__seed0"][0] == "failed" and all(now[c][0] == "done" for c in CELLS[:2]) else None

    killed = until(settled, poll=1)
    early = prunekit("ablate", grid, "--out", out, "--collect")
    # two submitting processes at once: the cell is submitted once, the other process sees it queued or running;
    # the first waits for the jobs (--wait) and collects
    both = [start("ablate", grid, "--out", out, "--wait"), start("ablate", grid, "--out", out)]
    submitted = [p.communicate(timeout=300) for p in both]
    assert all(p.returncode == 0 for p in both), submitted
    assert status(grid, out)["tina__s16__seed0"][0] == "done"  # the first process waited for it (--wait)
    collected = prunekit("ablate", grid, "--out", out, "--collect")
    return {"tmp": tmp, "grid": grid, "out": out, "before": before, "first": res.stdout, "killed": killed,
            "early": early, "submitted": [s[0] for s in submitted], "collected": collected}


def test_a_fresh_grid_lists_every_cell_to_do(cluster_grid):
    assert cluster_grid["before"] == {c: ("todo", "") for c in CELLS}
    assert "submitted 3 jobs (submitit-local: 0 GPU, 1 CPUs" in cluster_grid["first"]
    assert "follow with: prunekit ablate" in cluster_grid["first"]


def test_a_killed_job_shows_failed_and_resumes_from_its_resume_pt(cluster_grid):
    out = cluster_grid["out"]
    state, detail = cluster_grid["killed"]["tina__s16__seed0"]
    assert state == "failed" and "died while running the cell" in detail, detail
    lines = [line for text in cluster_grid["submitted"] for line in text.splitlines() if "submitted" in line]
    counts = sorted(int(line.split("submitted ")[1].split()[0]) for line in lines)
    assert counts == [0, 1], lines  # one process submitted the failed cell, the other saw it queued or running
    assert "2 done" in lines[0] and "2 done" in lines[1]
    waited = cluster_grid["submitted"][0]
    assert "| tina |" in waited and "ablation folder:" in waited  # --wait: then collected
    record = json.loads((out / "jobs" / "tina__s16__seed0.state.json").read_text())
    assert record["state"] == "done" and record["resumed"] is True
    first = json.loads((out / "jobs" / "local_l1_oneshot__s8__seed0.state.json").read_text())
    assert first["state"] == "done" and first["resumed"] is False
    run = out / "runs" / "tina__s16__seed0"
    assert (run / "DONE").exists() and not (run / "resume.pt").exists()
    cycles = [json.loads(x)["cycle"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "cycle"]
    assert cycles == [0, 1, 2]  # every cycle recorded once: the resumed job did not start over


def test_collect_is_refused_until_every_cell_is_done(cluster_grid):
    early = cluster_grid["early"]
    assert early.returncode == 2
    assert "--collect: 1 of 3 cells are not done: tina__s16__seed0 failed" in early.stderr + early.stdout
    assert "Traceback" not in early.stderr


def test_collect_equals_the_same_grid_run_locally(cluster_grid, tmp_path):
    res = cluster_grid["collected"]
    assert res.returncode == 0, res.stderr
    out = cluster_grid["out"]
    local = prunekit("ablate", cluster_grid["grid"], "--out", tmp_path / "local", "--launcher", "local")
    assert local.returncode == 0, local.stderr
    for name in ("cells.csv", "table.csv", "table.md"):
        assert (out / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(p.name for p in (tmp_path / "local" /
                                                                                          "plots").iterdir())
    assert status(cluster_grid["grid"], out) == {c: ("done", "") for c in CELLS}
    again = prunekit("ablate", cluster_grid["grid"], "--out", out)
    assert again.returncode == 0 and "submitted 0 jobs" in again.stdout and "3 done" in again.stdout
    assert "ablation folder:" in again.stdout  # every cell done: the plain command collects


def test_a_cell_whose_run_directory_is_locked_is_left_to_its_holder(tmp_path):
    run = tmp_path / "runs" / "cell"
    run.mkdir(parents=True)
    lock = RunLock(run)
    lock.acquire()
    try:
        job = CellJob(str(tmp_path / "missing.yaml"), [], str(run), str(tmp_path / "jobs"), "cell")
        assert job() == "running in another process"
        assert not (tmp_path / "jobs").exists()  # nothing recorded: the holder's job records its own state
    finally:
        lock.release()


def test_a_job_that_raised_shows_its_error_line(tmp_path):
    run, jobs = tmp_path / "runs" / "cell", tmp_path / "jobs"
    job = CellJob(str(tmp_path / "missing.yaml"), [], str(run), str(jobs), "cell")
    with pytest.raises(PrunekitError):
        job()
    record = json.loads((jobs / "cell.state.json").read_text())
    assert record["state"] == "failed"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a job id that is no process any more: the job has ended
    (jobs / "cell.job.json").write_text(json.dumps({"run": "cell", "launcher": "submitit-local",
                                                    "job_id": str(dead.pid), "submitted": record["time"] - 1,
                                                    "host": socket.gethostname()}))
    state = cell_state("cell", run, jobs, finished=False)
    assert state.state == "failed" and state.detail == record["error"]
    assert record["error"] == f"ConfigError: recipe: no such file '{tmp_path / 'missing.yaml'}'"


SBATCH = """#!/bin/sh
# stands in for SLURM's sbatch: keeps the script submitit wrote, answers as sbatch does
cp "$1" "{keep}"
echo "Submitted batch job 4242"
"""


def test_slurm_launcher_writes_the_sbatch_script_of_the_cluster_section(tmp_path):
    grid = write_grid(tmp_path, launcher="slurm", partition="gpu", account="lab", gpus_per_job=1, cpus_per_job=8,
                      time_min=720, array_parallelism=2, setup=["echo setup-line"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    keep = tmp_path / "sbatch.sh"
    res = prunekit("ablate", grid, "--out", tmp_path / "out")
    assert res.returncode == 2 and "--launcher slurm: no SLURM here (sbatch and srun not found" in res.stderr
    (bin_dir / "sbatch").write_text(SBATCH.format(keep=keep))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the jobs never run here
    for stub in ("sbatch", "srun"):
        (bin_dir / stub).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    res = prunekit("ablate", grid, "--out", tmp_path / "out", env=env)
    assert res.returncode == 2 and "submitting 3 jobs failed, nothing was submitted" in res.stderr, res.stderr
    assert "invalid partition specified" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not list((tmp_path / "out" / "jobs").glob("*.job.json"))
    (bin_dir / "sbatch").write_text(SBATCH.format(keep=keep))
    res = prunekit("ablate", grid, "--out", tmp_path / "out", "--time-min", 600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "submitted 3 jobs (slurm: 1 GPU, 8 CPUs, 600 min limit, partition gpu, account lab, at most 2 at once)" \
        in res.stdout
    script = keep.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=600", "#SBATCH --array=0-2%2", "echo setup-line"):
        assert line in script, (line, script)
    records = sorted(json.loads(p.read_text())["job_id"] for p in (tmp_path / "out" / "jobs").glob("*.job.json"))
    assert records == ["4242_0", "4242_1", "4242_2"]
    # no sacct here: the jobs' state cannot be read, so they count as queued, and nothing is submitted twice
    states = status(grid, tmp_path / "out")
    assert {s for s, _ in states.values()} == {"queued"}
    again = prunekit("ablate", grid, "--out", tmp_path / "out", env=env)
    assert again.returncode == 0 and "submitted 0 jobs" in again.stdout and "3 queued" in again.stdout


def test_dry_run_lists_the_jobs_and_their_resources(tmp_path):
    grid = write_grid(tmp_path, launcher="slurm", partition="gpu")
    res = prunekit("ablate", grid, "--out", tmp_path / "out", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would submit 3 jobs (slurm: 0 GPU, 1 CPUs, 1440 min limit, partition gpu, at most 64 at once):" \
        in res.stdout
    jobs = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ") and "(todo; estimate" in line]
    assert sorted(jobs) == CELLS
    assert not (tmp_path / "out").exists()


def test_bad_launcher_and_cluster_values_are_refused(tmp_path):
    grid = write_grid(tmp_path)
    res = prunekit("ablate", grid, "--launcher", "slurmm")
    assert res.returncode == 2 and "'slurmm' is not one of local, slurm, submitit-local" in res.stderr
    assert "did you mean 'slurm'" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "bad").mkdir()
    bad = write_grid(tmp_path / "bad", gpus_per_job=-1)
    res = prunekit("ablate", bad, "--status")
    assert res.returncode == 2 and "cluster.gpus_per_job: expected an integer >= 0, got -1" in res.stderr
    res = prunekit("ablate", grid, "--status", "--collect")
    assert res.returncode == 2 and "--status and --collect: give one of them" in res.stderr
    res = prunekit("ablate", grid, "--launcher", "local", "--wait")
    assert res.returncode == 2 and "--wait" in res.stderr
    res = prunekit("ablate", grid, "--launcher", "local", "--partition", "gpu", "--time-min", 60)
    assert res.returncode == 2 and "--partition, --time-min: for a cluster launcher" in res.stderr
    res = prunekit("ablate", grid, "--jobs", 2)
    assert res.returncode == 2 and "--jobs 2: counts local processes; with --launcher submitit-local" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_the_cli_knows_the_launchers_of_the_ablation_file():
    import typing

    from prunekit.ablation.spec import LAUNCHERS, ClusterSection
    from prunekit.cli.ablate import LAUNCHERS as CLI_LAUNCHERS

    assert CLI_LAUNCHERS == LAUNCHERS == typing.get_args(typing.get_type_hints(ClusterSection)["launcher"])
