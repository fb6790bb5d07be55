"""``prunekit ablate --launcher slurm``: every unfinished cell of a grid as one SLURM job, through submitit.

::

    prunekit ablate grid.yaml --launcher slurm --partition gpu --gpus-per-job 1 --time-min 720   # submit, return
    prunekit ablate grid.yaml --status        # done / running / queued / failed (its error's last line) / todo
    prunekit ablate grid.yaml --launcher slurm   # again: resubmits only failed and never-run cells
    prunekit ablate grid.yaml --collect       # every cell done: table.md, table.csv, cells.csv, plots

submitit (the SLURM client of PyTorch research code) writes the sbatch files, submits one job array per call (at
most ``array_parallelism`` jobs at once) and requeues a job SLURM is about to pre-empt or time out; the job then
resumes its cell from ``resume.pt`` (:class:`~prunekit.ablation.jobs.CellJob`). ``--launcher submitit-local`` takes the
same path with submitit's local executor (jobs as processes of this machine): a cluster submission tried on a
workstation, and what the tests run. A cell is submitted only when it is neither done, nor running, nor queued;
two ``prunekit ablate`` processes on one grid take a lock on its ``jobs/`` folder to decide, and inside a job the
run directory's own lock keeps a cell from running twice at once. Job logs: ``OUT/jobs/logs/``.

Ray is not offered: its job API runs one entry point per cluster, so it would need a scheduler of its own inside
prunekit, which SLURM and submitit already are.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from ..config import parse_section
from ..errors import PrunekitError
from ..io.files import atomic_write_text
from .grid import _checked_grid, _finished_as_planned, _plan, summarize
from .jobs import STATES, CellJob, CellState, cell_state, job_file
from .spec import ClusterSection

__all__ = ["cluster_config", "submit_ablation", "ablation_status", "collect_ablation", "wait_for"]


def cluster_config(section: ClusterSection, **given: Any) -> ClusterSection:
    """The ablation file's ``cluster`` section with the options given on the command line (None: not given)."""
    merged = {**asdict(section), **{k: v for k, v in given.items() if v is not None}}
    return parse_section(ClusterSection, merged, "cluster")


def _states(cells: list, base: str, out: Path) -> list[CellState]:
    """Every cell's state now, read from its run directory, its lock and its records in ``OUT/jobs``."""
    runs, jobs = out / "runs", out / "jobs"
    return [cell_state(c.run_id, runs / c.run_id, jobs, _finished_as_planned(runs / c.run_id, base, c.overrides))
            for c in cells]


def _grid_state(path, out) -> tuple[Any, str, list[Any], Path, list[CellState]]:
    """The grid (its tasks' data not loaded: status and collect read run directories only) and its cells' states."""
    spec, base, _, cells, out = _checked_grid(path, out, data=False)
    return spec, base, cells, out, _states(cells, base, out)


def ablation_status(path: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Every cell's state (``prunekit ablate --status``); reads only."""
    spec, _, _, out, states = _grid_state(path, out)
    counts = {s: sum(c.state == s for c in states) for s in STATES}
    return {"name": spec.name, "out": out, "cells": states, "counts": counts}


def collect_ablation(path: str | Path, out: str | Path | None = None, log=print) -> dict[str, Any]:
    """The tables and plots of a grid whose every cell is done (``prunekit ablate --collect``)."""
    spec, base, cells, out, states = _grid_state(path, out)
    missing = [s for s in states if s.state != "done"]
    if missing:
        listed = "; ".join(f"{s.run} {s.state}" + (f" ({s.detail})" if s.detail else "") for s in missing[:5])
        raise PrunekitError(f"--collect: {len(missing)} of {len(states)} cells are not done: {listed}"
                            f"{' ...' if len(missing) > 5 else ''}; `prunekit ablate {path} --status` lists them")
    return summarize(spec, cells, out, base, log)


@contextlib.contextmanager
def _submission_lock(jobs: Path) -> Iterator[None]:
    """One submitting process per grid at a time (the other waits, then sees what this one submitted)."""
    import fcntl

    jobs.mkdir(parents=True, exist_ok=True)
    fd = os.open(jobs / ".submit.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def _controller_output(cfg: ClusterSection, logs: Path) -> Iterator[None]:
    """submitit's local controllers (one process per job, started on leaving ``executor.batch()``) inherit this
    process's stdout and stderr: point those at ``logs/controllers.log`` meanwhile, or a pipe reading this command
    (``prunekit ablate ... | tee``, a test) would stay open until the last job ends."""
    if cfg.launcher != "submitit-local":
        yield
        return
    import sys

    logs.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.open(logs / "controllers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def _executor(cfg: ClusterSection, folder: Path, name: str):
    import submitit

    if cfg.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        extra = {"slurm_partition": cfg.partition, "slurm_account": cfg.account, "slurm_qos": cfg.qos,
                 "slurm_array_parallelism": cfg.array_parallelism, "slurm_setup": list(cfg.setup),
                 "slurm_additional_parameters": dict(cfg.additional)}
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        extra = {"local_setup": list(cfg.setup)} if cfg.setup else {}
    params = {"name": name, "timeout_min": cfg.time_min, "nodes": 1, "tasks_per_node": 1,
              "cpus_per_task": cfg.cpus_per_job, "gpus_per_node": cfg.gpus_per_job, "mem_gb": cfg.mem_gb,
              **extra}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit_ablation(path: str | Path, out: str | Path | None, cfg: ClusterSection, *, dry_run: bool = False,
                    log=print) -> dict[str, Any]:
    """Submit every cell that is not done, running or queued; returns what was submitted (or, with ``dry_run``,
    what would be: the jobs, their resources and each cell's estimate from its own steps)."""
    if cfg.launcher == "local":
        raise PrunekitError("--launcher: 'local' runs cells in this process (prunekit ablate FILE --jobs N)")
    grid = _checked_grid(path, out)
    spec, base, task_recipes, cells, out = grid
    resources = (f"{cfg.launcher}: {cfg.gpus_per_job} GPU, {cfg.cpus_per_job} CPUs"
                 + (f", {cfg.mem_gb:g} GB" if cfg.mem_gb else "") + f", {cfg.time_min} min limit"
                 + (f", partition {cfg.partition}" if cfg.partition else "")
                 + (f", account {cfg.account}" if cfg.account else "")
                 + (f", at most {cfg.array_parallelism} at once" if cfg.launcher == "slurm" else ""))
    if dry_run:
        plan, states = _plan(grid, 1), _states(cells, base, out)
        seconds = {r["run"]: r["seconds"] for r in plan["cells"]}
        return {"out": out, "resources": resources, "states": states, "plan": plan,
                "submit": [(c.run_id, s.state, seconds[c.run_id]) for c, s in zip(cells, states)
                           if s.state in ("todo", "failed")]}
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise PrunekitError(f"--launcher {cfg.launcher} needs submitit: pip install 'prunekit[cluster]'") from None
    if cfg.launcher == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise PrunekitError("--launcher slurm: no SLURM here (sbatch and srun not found on PATH); submit from the "
                            "cluster's login node, or try the jobs on this machine with --launcher submitit-local")
    from ..run import ensure_checkpoint, run_recipe
    from ..run.progress import ProgressReporter, make_console

    runs, jobs = out / "runs", out / "jobs"
    runs.mkdir(parents=True, exist_ok=True)
    for recipe in task_recipes:  # a missing backbone is pretrained once, here, before any job starts
        ensure_checkpoint(recipe, runs, ProgressReporter(console=make_console(quiet=False)), run=run_recipe)
    with _submission_lock(jobs):
        states = _states(cells, base, out)  # under the lock: what another submission queued meanwhile counts
        todo = [c for c, s in zip(cells, states) if s.state in ("todo", "failed")]
        submitted = []
        if todo:
            try:  # one sbatch call for the whole array: it is submitted, or nothing is
                executor = _executor(cfg, jobs / "logs", f"prunekit-{spec.name}")
                with _controller_output(cfg, jobs / "logs"), executor.batch():
                    handles = [executor.submit(CellJob(base, list(c.overrides), str(runs / c.run_id), str(jobs),
                                                       c.run_id, cfg.cpus_per_job)) for c in todo]
            except Exception as e:  # sbatch refused an option (cluster.additional, a partition ...): say what it said
                raise PrunekitError(f"--launcher {cfg.launcher}: submitting {len(todo)} jobs failed, nothing was "
                                    f"submitted: {type(e).__name__}: {str(e).strip()[-800:]}") from None
            now = time.time()
            for c, job in zip(todo, handles):
                record = {"run": c.run_id, "launcher": cfg.launcher, "job_id": str(job.job_id),
                          "folder": str(jobs / "logs"), "stdout": str(job.paths.stdout),
                          "stderr": str(job.paths.stderr), "submitted": now, "host": socket.gethostname()}
                atomic_write_text(job_file(jobs, c.run_id), json.dumps(record) + "\n")
                submitted.append(record)
    skipped = {s: sum(x.state == s for x in states) for s in ("done", "running", "queued")}
    log(f"ablation {spec.name}: {len(cells)} runs; submitted {len(submitted)} job{'s' if len(submitted) != 1 else ''} "
        f"({resources}); {skipped['done']} done, {skipped['running']} running, {skipped['queued']} queued -> {out}")
    return {"out": out, "submitted": submitted, "skipped": skipped, "resources": resources, "cells": len(cells)}


def wait_for(path: str | Path, out: str | Path | None, poll_s: float = 10.0, log=print) -> dict[str, Any]:
    """Poll :func:`ablation_status` until no cell is queued or running; returns the last status."""
    last = None
    while True:
        status = ablation_status(path, out)
        counts = status["counts"]
        if counts != last:
            log(", ".join(f"{n} {s}" for s, n in counts.items() if n))
            last = counts
        if counts["queued"] == 0 and counts["running"] == 0:
            return status
        time.sleep(poll_s)
