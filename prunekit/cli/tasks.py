"""``prunekit predict`` and ``prunekit serve``: one run's model, or many tasks on one backbone."""
from __future__ import annotations

import importlib.util
import sys

import click

from ..errors import PrunekitError

__all__ = ["predict", "serve"]

TASK_HELP = "a task: NAME=RUN_DIR or NAME=TRAINED_FILE (repeatable); the runs must share one backbone"
BACKBONE_HELP = "the backbone weights file, when it is not where the runs' model.checkpoint says"


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[RUN_DIR] IMAGES...")
@click.option("--task", "named", multiple=True, metavar="NAME=RUN", help=TASK_HELP)
@click.option("--top-k", type=int, default=5, show_default=True, help="classes shown per image")
@click.option("--cycle", type=int, default=None, help="training cycle whose model answers (default: the last; one "
                                                      "run only)")
@click.option("--backbone", type=click.Path(dir_okay=False), default=None, help=BACKBONE_HELP)
@click.option("--out", type=click.Path(), default=None, help="also write the table as CSV: task, image, top1, p1, ...")
@click.option("--overwrite", is_flag=True, help="replace the --out file if it exists")
def predict(args, named, top_k, cycle, backbone, out, overwrite):
    """Classify IMAGES (files, or folders of them) with RUN_DIR's model, or under several tasks (--task) at once.

    \b
    RUN_DIR may also be one cycle's trained file (RUN_DIR/adapters/cycle_K.safetensors). Each image is prepared as
    the run's validation images were (grey or RGB, resized to model.img_size, normalised). When every image sits
    in a folder named after a class (val/<class>/...), the top-1 accuracy against those folder names is printed too.
    With --task, IMAGES are NAME=PATH (that task's images) or PATH (every task's); all tasks' images go through
    one backbone in mixed batches.
    \b
    prunekit predict runs/quickstart digit.png --top-k 3
    prunekit predict runs/my_task my_images/val
    prunekit predict --task pets=runs/pets --task cars=runs/cars pets=photos/pets cars=photos/cars --out table.csv
    """
    from ..tasks.predict import TaskPrediction, parse_named, write_table

    if out is not None and not overwrite:
        _check_out(out)  # before any image is read
    if not named:
        from ..run import predict as run_predict

        run_dir, images = args[0], args[1:]
        if not images:
            raise PrunekitError("IMAGES: give at least one image file or folder after RUN_DIR (or name tasks with "
                                "--task NAME=RUN)")
        res = run_predict(run_dir, images, top_k=top_k, cycle=cycle, backbone=backbone)
        if res.note:
            click.echo(f"note: {res.note}; showing label indices")
        _print_rows([(None, r.path, r.top) for r in res.rows])
        which = "" if res.cycle is None else f"cycle {res.cycle}, "
        click.echo(f"{_images(len(res.rows))} ({which}{run_dir})"
                   + ("" if res.accuracy is None else f"; top-1 against the folder names: {100 * res.accuracy:.2f}%"))
        rows = [TaskPrediction(str(run_dir), r.path, r.top) for r in res.rows]
    else:
        from ..tasks.predict import predict_tasks

        if cycle is not None:
            raise PrunekitError("--cycle: with --task each run answers with its last cycle; name a cycle's trained "
                                "file instead (NAME=RUN_DIR/adapters/cycle_K.safetensors)")
        tasks = dict(_tasks(named))
        images = parse_named(args, "IMAGES", list(tasks))
        res = predict_tasks(tasks, images, top_k=top_k, backbone=backbone)
        _print_rows([(r.task, r.path, r.top) for r in res.rows])
        for task in tasks:
            n = sum(r.task == task for r in res.rows)
            if n:
                acc = res.accuracy.get(task)
                click.echo(f"{task}: {_images(n)} ({tasks[task]})" + (
                    "" if acc is None else f"; top-1 against the folder names: {100 * acc:.2f}%"))
        rows = res.rows
    if out is not None:
        click.echo(f"wrote {write_table(rows, out, overwrite=overwrite)} ({len(rows)} rows)")


def _check_out(out: str) -> None:
    from pathlib import Path

    if Path(out).exists():
        raise PrunekitError(f"--out: {out} exists; pass --overwrite to replace it")


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def _print_rows(rows) -> None:
    width = min(60, max(len(str(path)) for _, path, _ in rows))
    tw = max((len(t) for t, _, _ in rows if t), default=0)
    for task, path, top in rows:
        lead = f"{task:<{tw}}  " if task else ""
        click.echo(f"{lead}{str(path):<{width}}  " + "  ".join(f"{name} {100 * p:.1f}%" for _, name, p in top))


def _tasks(named) -> list[tuple[str, str]]:
    from ..tasks.predict import parse_named

    pairs = parse_named(named, "--task")
    seen = [n for n, _ in pairs]
    clash = sorted({n for n in seen if seen.count(n) > 1})
    if clash:
        raise PrunekitError(f"--task: {clash[0]!r} is named twice; each task needs its own name")
    return pairs


@click.command()
@click.argument("runs", nargs=-1, type=click.Path())
@click.option("--task", "named", multiple=True, metavar="NAME=RUN", help=TASK_HELP)
@click.option("--backbone", type=click.Path(dir_okay=False), default=None, help=BACKBONE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but loopback is reachable from other machines")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="0: any free port (printed)")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="requests answered by one forward at most (1: no batching)")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="how long the oldest request waits for others to join its batch")
@click.option("--queue", "queue_size", type=click.IntRange(min=1), default=256, show_default=True,
              help="requests waiting at most; more get 503")
@click.option("--max-mb", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="largest upload accepted (MiB); larger get 413")
@click.option("--device", default="cpu", show_default=True, help="where the model runs (cpu, cuda, cuda:1 ...)")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's log level (info: one line per request)")
def serve(runs, named, backbone, host, port, max_batch, max_wait_ms, queue_size, max_mb, device, log_level):
    """Serve the tasks of RUNS (run directories or trained files) on one backbone over HTTP.

    \b
    GET /health, GET /v1/tasks, POST /v1/tasks/NAME/predict (an image body, or multipart field 'file';
    ?top_k=5). With PRUNEKIT_SERVE_TOKEN set, POST /v1/tasks {"run": PATH, "name": NAME} and DELETE
    /v1/tasks/NAME add and remove tasks (Authorization: Bearer $PRUNEKIT_SERVE_TOKEN); unset, they are refused.
    Needs pip install 'prunekit[serve]'. See docs/serving.md.
    \b
    prunekit serve runs/pets runs/cars
    prunekit serve --task pets=runs/pets --task cars=runs/cars --port 8080 --max-batch 64
    """
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise PrunekitError(f"prunekit serve needs {' and '.join(missing)}: pip install 'prunekit[serve]'")
    from ..serve.server import bind, is_loopback, run_server, token_from_environment

    token = token_from_environment()
    pairs = [(None, r) for r in runs] + _tasks(named)
    if not pairs:
        raise PrunekitError("RUNS: give at least one run directory or trained file (or --task NAME=RUN)")
    from pathlib import Path

    from ..serve.app import create_app
    from ..tasks.model import default_name, load_tasks

    names = [n or default_name(Path(r)) for n, r in pairs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PrunekitError(f"RUNS: two tasks are named {clash[0]!r}; name them with --task NAME=RUN")
    model = load_tasks(dict(zip(names, (r for _, r in pairs))), backbone=backbone, device=device)
    app = create_app(model, token=token, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                     max_bytes=int(max_mb * 2 ** 20), backbone=backbone)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}: reachable from other machines", err=True)
    changes = "on (Authorization: Bearer $PRUNEKIT_SERVE_TOKEN)" if token else "off (PRUNEKIT_SERVE_TOKEN unset)"
    click.echo(f"serving {len(model.tasks)} task{'s' if len(model.tasks) != 1 else ''} ({', '.join(model.tasks)}) on "
               f"{url}; batches of up to {max_batch}, {max_wait_ms:g} ms wait; task changes {changes}")
    sys.stdout.flush()
    run_server(app, sock, log_level=log_level)
