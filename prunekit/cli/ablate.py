"""``prunekit ablate``: a grid of runs, here (``--jobs``) or on a cluster (``--launcher slurm``), and its tables."""
from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["ablate", "LAUNCHERS"]

LAUNCHERS = ("local", "slurm", "submitit-local")  # = prunekit.ablation.spec.LAUNCHERS (imported late: no torch here)


def _launcher(ctx, param, value):
    from ..errors import did_you_mean

    if value is not None and value not in LAUNCHERS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(LAUNCHERS)};{did_you_mean(value, LAUNCHERS)}")
    return value


@click.command()
@click.argument("ablation", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="output folder (default: output.dir/<ablation name>)")
@click.option("--jobs", type=int, default=1, show_default=True, help="cells run in this many processes (local)")
@click.option("--dry-run", is_flag=True, help="check every cell, list them and estimate the time (with a cluster "
                                              "launcher: the jobs it would submit); nothing is trained or written")
@click.option("--launcher", default=None, callback=_launcher, metavar="|".join(LAUNCHERS),
              help="where cells run (default: the file's cluster.launcher, else local): slurm submits one job per "
                   "cell through submitit; submitit-local runs those jobs as processes here")
@click.option("--status", is_flag=True, help="list every cell as done / running / queued / failed / todo")
@click.option("--collect", is_flag=True, help="write table.md, table.csv, cells.csv and plots (every cell done)")
@click.option("--wait", is_flag=True, help="after submitting, wait for the jobs, then collect")
@click.option("--partition", default=None, help="SLURM partition (cluster.partition)")
@click.option("--account", default=None, help="SLURM account (cluster.account)")
@click.option("--qos", default=None, help="SLURM quality of service (cluster.qos)")
@click.option("--gpus-per-job", type=int, default=None, help="GPUs per cell (cluster.gpus_per_job)")
@click.option("--cpus-per-job", type=int, default=None, help="CPU cores per cell (cluster.cpus_per_job)")
@click.option("--mem-gb", type=float, default=None, help="memory per cell (cluster.mem_gb)")
@click.option("--time-min", type=int, default=None, help="time limit per job; longer cells are requeued and resume "
                                                         "(cluster.time_min)")
@click.option("--array-parallelism", type=int, default=None, help="jobs running at once at most "
                                                                  "(cluster.array_parallelism)")
def ablate(ablation, out, jobs, dry_run, launcher, status, collect, wait, partition, account, qos, gpus_per_job,
           cpus_per_job, mem_gb, time_min, array_parallelism):
    """Run (or resume) an ablation grid; writes table.md, table.csv, cells.csv and plots. --dry-run lists its runs
    and estimates the time first.

    \b
    prunekit ablate grid.yaml --jobs 2                       cells as 2 processes here
    prunekit ablate grid.yaml --launcher slurm --partition gpu --time-min 720   one SLURM job per unfinished cell
    prunekit ablate grid.yaml --status                       done / running / queued / failed (its error) / todo
    prunekit ablate grid.yaml --collect                      the tables, once every cell is done
    """
    from ..errors import PrunekitError

    if jobs < 1:
        raise click.BadParameter(f"expected an integer >= 1, got {jobs}", param_hint="--jobs")
    modes = [n for n, v in (("--status", status), ("--collect", collect), ("--dry-run", dry_run)) if v]
    if len(modes) > 1:
        raise PrunekitError(f"{' and '.join(modes)}: give one of them")
    from ..ablation.cluster import ablation_status, cluster_config, collect_ablation

    if status:
        return _print_status(ablation_status(ablation, out))
    if collect:
        return _print_result(collect_ablation(ablation, out, log=click.echo))
    from ..ablation.spec import load_ablation

    flags = dict(partition=partition, account=account, qos=qos, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                 mem_gb=mem_gb, time_min=time_min, array_parallelism=array_parallelism)
    cfg = cluster_config(load_ablation(ablation).cluster, launcher=launcher, **flags)
    if cfg.launcher == "local":
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
        if given:
            raise PrunekitError(f"{', '.join(given)}: for a cluster launcher (--launcher slurm or submitit-local); "
                                "this grid runs locally")
        if wait:
            raise PrunekitError("--wait: a local grid runs in this process; it waits anyway")
        from ..ablation.grid import plan_ablation, run_ablation

        if dry_run:
            _print_ablation_plan(plan_ablation(ablation, out, jobs))
            return
        return _print_result(run_ablation(ablation, out, jobs, log=click.echo))
    if jobs != 1:
        raise PrunekitError(f"--jobs {jobs}: counts local processes; with --launcher {cfg.launcher} every cell is "
                            "a job of its own (--array-parallelism: how many run at once)")
    from ..ablation.cluster import submit_ablation, wait_for

    result = submit_ablation(ablation, out, cfg, dry_run=dry_run, log=click.echo)
    if dry_run:
        _print_ablation_plan(result["plan"])
        click.echo(f"would submit {len(result['submit'])} job{'s' if len(result['submit']) != 1 else ''} "
                   f"({result['resources']}):")
        for run, state, seconds in result["submit"]:
            click.echo(f"  {run}  ({state}; estimate {_duration(seconds)} on this machine's measured step time)")
        return
    if result["skipped"]["done"] == result["cells"]:  # nothing left to run: the tables, as --collect writes them
        return _print_result(collect_ablation(ablation, out, log=click.echo))
    if not wait:
        click.echo(f"follow with: prunekit ablate {ablation} --status; when every cell is done: --collect")
        return
    final = wait_for(ablation, out, log=click.echo)
    if final["counts"]["done"] == len(final["cells"]):
        return _print_result(collect_ablation(ablation, out, log=click.echo))
    _print_status(final)
    sys.exit(1)


def _print_result(result: dict) -> None:
    click.echo((Path(result["out"]) / "table.md").read_text())
    click.echo(f"ablation folder: {result['out']}")


def _print_status(status: dict) -> None:
    width = max(len(c.run) for c in status["cells"])
    for c in status["cells"]:
        click.echo(f"{c.run:<{width}}  {c.state:<8} {c.detail}".rstrip())
    click.echo(f"{status['name']}: " + ", ".join(f"{n} {s}" for s, n in status["counts"].items() if n)
               + f" ({len(status['cells'])} cells in {status['out']})")


def _print_ablation_plan(plan: dict) -> None:
    cells = plan["cells"]
    width = max(len(c["run"]) for c in cells)
    click.echo(f"{'run':<{width}}  {'row':<26} seed  cycles x epochs x steps   est.")
    for c in cells:
        est = "finished" if c["finished"] else _duration(c["seconds"])
        click.echo(f"{c['run']:<{width}}  {c['row']:<26} {c['seed']:>4}  {c['cycles']:>6} x {c['epochs']:>6} x "
                   f"{c['steps_per_epoch']:>5}   {est}")
    todo = sum(not c["finished"] for c in cells)
    for task, epochs in plan["epochs_per_task"].items():
        click.echo(f"  {task or plan['name']}: {sum(c['task'] == task for c in cells)} runs, {epochs} training epochs")
    click.echo(f"  total: {sum(plan['epochs_per_task'].values())} training epochs")
    click.echo(f"{len(cells)} runs, {len(cells) - todo} already finished in {plan['out']}, {todo} to run")
    click.echo(f"estimate: {_duration(plan['estimate_s'])} with --jobs {plan['jobs']} (an estimate: "
               f"{1000 * plan['train_step_s']:.0f} ms per training step of {plan['batch_size']} images and "
               f"{1000 * plan['eval_step_s']:.0f} ms per evaluation step, measured now on the base recipe's model "
               f"with {plan['threads']} thread{'s' if plan['threads'] != 1 else ''}; methods differ in cost and the "
               "machine's load changes)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
