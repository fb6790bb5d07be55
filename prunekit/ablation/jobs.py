"""One ablation cell as a cluster job, and what each cell is doing now (``prunekit ablate --status``).

A job runs :class:`CellJob`: it finishes nothing twice (a cell whose run directory holds its finished run is skipped),
runs nothing twice (the run directory's lock: a cell another process is writing is left to it), and continues a
cell that died (pre-emption, time limit, a kill) from its own ``resume.pt``. On SLURM, submitit calls
:meth:`CellJob.checkpoint` before a pre-emption or the time limit and requeues the job, which then resumes.

Every cell has two small records under ``OUT/jobs/``, each written by one side only::

    <cell>.job.json     the submitting process: launcher, job id, log files, when            (cluster.py)
    <cell>.state.json   the job: started / done / failed, host, pid, the error's last line    (here)

and a cell's state follows from them, its run directory and its lock: ``done`` (finished as the grid asks now),
``running`` (its lock is held), ``queued`` (submitted, not started, the job alive), ``failed`` (the job ended without
finishing the cell: the error's last line, or how it died), ``todo`` (never submitted, or to run again).
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.files import atomic_write_text
from ..io.runlock import describe_holder, holder_of
from ..train.resume import STATE_FILE

__all__ = ["CellJob", "CellState", "cell_state", "read_record", "job_file", "state_file"]

STATES = ("done", "running", "queued", "failed", "todo")


def job_file(jobs: Path, run_id: str) -> Path:
    return jobs / f"{run_id}.job.json"


def state_file(jobs: Path, run_id: str) -> Path:
    return jobs / f"{run_id}.state.json"


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(jobs: Path, run_id: str, state: str, **extra) -> None:
    atomic_write_text(state_file(jobs, run_id), json.dumps(
        {"state": state, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
         "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"), **extra}) + "\n")


@dataclass
class CellJob:
    """What one job runs: the cell ``run_id`` of the grid whose base recipe is ``base``, into ``run_dir``, with
    ``threads`` torch threads (the job's CPUs; 0: torch's default)."""

    base: str
    overrides: list[str]
    run_dir: str
    jobs: str
    run_id: str
    threads: int = 0

    def __call__(self) -> str:
        from ..io.runlock import RunLockedError
        from ..run import run_recipe
        from ..run.progress import ProgressReporter, make_console
        from .grid import _finished_as_planned, _started_as_planned
        from ..recipe.spec import load_recipe

        run_dir, jobs = Path(self.run_dir), Path(self.jobs)
        if _finished_as_planned(run_dir, self.base, self.overrides):
            return "done already"
        if holder_of(run_dir) is not None:
            return "running in another process"  # that one finishes it; a cell never runs twice at once
        resume = (run_dir / STATE_FILE).is_file() and _started_as_planned(run_dir, self.base, self.overrides)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        _write_state(jobs, self.run_id, "started", resumed=resume)
        quiet = ProgressReporter(console=make_console(quiet=True))
        try:
            if resume:
                run_recipe(load_recipe(str(run_dir / "recipe.resolved.yaml")), out=run_dir, resume=True,
                           reporter=quiet)
            else:
                run_recipe(load_recipe(self.base, self.overrides), out=run_dir, overwrite=True, reporter=quiet)
        except RunLockedError:
            return "running in another process"
        except BaseException as e:  # the job fails; --status shows this line
            _write_state(jobs, self.run_id, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                         if str(e) else type(e).__name__)
            raise
        _write_state(jobs, self.run_id, "done", resumed=resume)
        return "resumed and finished" if resume else "finished"

    def checkpoint(self, *args, **kwargs):
        """submitit, before a pre-emption or the time limit: requeue this job; it resumes from ``resume.pt``."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


@dataclass(frozen=True)
class CellState:
    """A cell's state (module docstring) and a line that says more (who runs it, the error, the job id)."""

    run: str
    state: str
    detail: str = ""


def cell_state(run_id: str, run_dir: Path, jobs: Path, finished: bool) -> CellState:
    """What cell ``run_id`` is doing now; ``finished``: its run directory holds the run the grid asks for."""
    if finished:
        return CellState(run_id, "done")
    holder = holder_of(run_dir)
    if holder is not None:
        return CellState(run_id, "running", describe_holder(holder))
    job = read_record(job_file(jobs, run_id))
    if job is None:
        return CellState(run_id, "todo", "partly run: resumes from its resume.pt" if
                         (run_dir / STATE_FILE).is_file() else "")
    state = read_record(state_file(jobs, run_id)) or {}
    ran = state.get("time", 0) >= job.get("submitted", 0)
    if ran and state.get("state") == "failed":
        return CellState(run_id, "failed", state.get("error", ""))
    alive = _job_alive(job)
    if alive is False:
        return CellState(run_id, "failed", _death(job, state if ran else {}))
    started = ran and state.get("state") == "started" and alive != "waiting"  # a requeued job waits again
    return CellState(run_id, "running" if started else "queued", f"job {job['job_id']} ({job['launcher']})")


def _job_alive(job: dict[str, Any]) -> bool | str | None:
    """Whether the job is queued or running: True, "waiting" (SLURM has it pending, or requeued), False (it ended)
    or None (cannot tell from here)."""
    if job.get("launcher") == "slurm":
        try:
            import submitit

            state = submitit.SlurmJob(job["folder"], str(job["job_id"])).state.upper()
        except Exception:  # no sacct here (a login node without accounting): say nothing rather than guess
            return None
        if state in ("PENDING", "REQUEUED", "CONFIGURING", "SUSPENDED", "UNKNOWN", "READY"):
            return "waiting"
        return state in ("RUNNING", "COMPLETING", "RESIZING")
    if job.get("host") != socket.gethostname():
        return None
    pid = int(job["job_id"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of this very process stays a zombie until reaped
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return True


def _death(job: dict[str, Any], state: dict[str, Any]) -> str:
    """How a job that is gone ended without finishing its cell: its error log's last line, or what is known."""
    for log in (job.get("stderr"), job.get("stdout")):
        if log and Path(log).is_file():
            lines = [x for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
            errors = [x for x in lines if "Error" in x or "error:" in x or "Killed" in x or "CANCELLED" in x]
            if errors:
                return errors[-1].strip()[:300]
    if state.get("state") == "started":
        return f"job {job['job_id']} died while running the cell (killed, pre-empted or out of time)"
    return f"job {job['job_id']} ended before it started the cell"
