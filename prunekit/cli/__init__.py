"""``prunekit`` command line: run, inspect, list, eval, predict, serve and export recipes and runs.

Bad input ends with ``error: <what, where, what is allowed>`` on stderr and exit code 2; nothing is written.
``prunekit eval`` exits 3 when the re-measured top-1 differs from the recorded one (MISMATCH).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import PrunekitError
from ..run.progress import ProgressReporter, make_console
from ..recipe.spec import load_recipe
from ..recipe.builtin import builtin_recipes, builtin_recipes_dir, find_recipe

LISTABLE = ("strategies", "scorers", "scopes", "methods", "datasets", "models", "recipes")
EXIT_BAD_INPUT = 2  # a user's mistake: an `error: ...` line, nothing written
EXIT_MISMATCH = 3  # `prunekit eval`: the re-measured top-1 is not the recorded one


class _Group(click.Group):
    """Turns prunekit's own errors into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PrunekitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prunekit")
def main():
    """prunekit: structured pruning for PyTorch; TINA (Tiny Adapters for Vision Transformers) by default.

    \b
    prunekit run quickstart                       train + prune on the offline default (a built-in recipe)
    prunekit run tina_swin --dry-run              validate and print the plan, no data or hub needed
    prunekit inspect RECIPE                       adapters / groups, widths, parameters
    prunekit inspect runs/quickstart              what a run did: neurons per adapter per cycle, top-1
    prunekit list strategies                      what can be named in a recipe
    prunekit eval runs/quickstart --cycle 2       reload a cycle's adapters and re-measure top-1
    prunekit predict runs/quickstart IMAGES...    classify image files with a run's model
    prunekit serve runs/a runs/b                  many tasks on one backbone over HTTP (pip install 'prunekit[serve]')
    prunekit export runs/quickstart --format onnx one file for inference, checked against PyTorch
    """


SET_HELP = "override a recipe key, e.g. --set train.lr=0.01 --set method.sigma=16 (repeatable; values are YAML)"


@main.command()
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--out", type=click.Path(file_okay=False), help="run directory (default: output.dir/<recipe name>)")
@click.option("--dry-run", is_flag=True, help="validate, build the model with random weights, print the plan the "
                                              "run executes and its estimated duration; no image loaded, no hub, "
                                              "nothing written")
@click.option("--overwrite", is_flag=True, help="replace an existing prunekit run directory (only the files prunekit "
                                                "wrote; a folder holding anything else is refused)")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="continue the unfinished run in this directory from its last finished epoch (its own recipe)")
@click.option("--quiet", is_flag=True, help="print only the final table")
def run(recipe, overrides, out, dry_run, overwrite, resume_dir, quiet):
    """Train and prune as RECIPE says (a file, or a built-in recipe by name); writes a run directory.

    \b
    prunekit run quickstart --set train.lr=1e-3
    prunekit run --resume runs/quickstart          continue after a crash or a kill
    torchrun --nproc_per_node=2 -m prunekit run RECIPE   data-parallel (see docs/distributed.md)
    """
    # the run phases import torch and timm: a recipe's own mistakes are reported before that import (in ~0.2 s)
    if resume_dir is not None:
        from ..run import RunFinished, recipe_to_resume, run_recipe

        if recipe or overrides or out or dry_run or overwrite:
            given = [n for n, v in (("RECIPE", recipe), ("--set", overrides), ("--out", out), ("--dry-run", dry_run),
                                    ("--overwrite", overwrite)) if v]
            raise PrunekitError(f"--resume: continues the run with the recipe it started with; drop {', '.join(given)}")
        r = recipe_to_resume(resume_dir)
        reporter = ProgressReporter(console=make_console(quiet=quiet))
        try:
            result = run_recipe(r, out=resume_dir, reporter=reporter, resume=True)
        except RunFinished as e:
            click.echo(str(e))
            return
    else:
        if recipe is None:
            raise click.UsageError("give a RECIPE (or --resume RUN_DIR)")
        result = _run_recipe_file(recipe, overrides, out, dry_run, overwrite, quiet)
        if result is None:
            return
    from ..run import end_processes

    if not end_processes():
        return  # under torchrun, rank 0 alone prints the result
    if quiet:
        click.echo(result.table())
    click.echo(f"run directory: {result.run_dir}")


def _run_recipe_file(recipe, overrides, out, dry_run, overwrite, quiet):
    """``prunekit run RECIPE``: the run's result, or None after a dry run (which only prints)."""
    r = load_recipe(find_recipe(recipe), list(overrides))
    from ..run import dry_run as plan_run, run_recipe

    if dry_run:
        console = make_console()
        info = plan_run(r)
        console.print(f"[bold]{r.name}[/bold]: recipe valid")
        for k, v in info.items():
            if isinstance(v, list):
                v = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)
            elif isinstance(v, float):
                v = f"{v:.4g}"
            elif v is None:
                v = "unknown"
            console.print(f"  {k:<22} {v}", markup=False)
        return None
    reporter = ProgressReporter(console=make_console(quiet=quiet))
    return run_recipe(r, out=out, overwrite=overwrite, reporter=reporter)



@main.command()
@click.argument("recipe", metavar="RECIPE|RUN_DIR")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def inspect(recipe, overrides):
    """Adapters / prunable groups of RECIPE's model (random weights), their widths and parameter counts; or, given a
    run directory, what the run did: every adapter's neurons in every cycle, parameters, top-1, adapters removed.
    """
    from rich.table import Table

    if Path(recipe).is_dir():
        if overrides:
            raise PrunekitError(f"--set: {recipe} is a run directory, inspected as it ran; drop --set")
        return _inspect_run(recipe)
    r = load_recipe(find_recipe(recipe), list(overrides))  # a recipe's mistakes are found before torch is imported
    from ..run import inspect_recipe

    info = inspect_recipe(r)
    table = Table(title=f"{r.name}: {r.model.name} + {r.method['name']}, {info.classes} classes")
    backbone = r.strategy.groups == "backbone"  # channels, neurons and heads: a kind instead of sigma_i
    columns = ("#", "group", "kind", "width", "params") if backbone else (
        "#", "adapter", "m (fan)", "n (width)", "sigma_i", "params")
    for col in columns:
        table.add_column(col, justify="left" if col in ("adapter", "group", "kind") else "right")
    for i, g in enumerate(info.groups):
        cells = (g.kind, str(g.width)) if backbone else (str(g.fan), str(g.width), f"{g.fan / g.width:.1f}")
        table.add_row(str(i), g.name, *cells, f"{g.params:,}")
    console = make_console()
    console.print(table)
    total, trainable = info.total_params, info.trainable_params
    console.print(f"groups: {len(info.groups)}  {'units' if backbone else 'neurons'}: "
                  f"{sum(g.width for g in info.groups)}  trainable: {trainable:,} of {total:,} "
                  f"({100 * trainable / total:.3f}%)")
    console.print(f"classes: {info.classes}" + (f" ({info.note})" if info.note else ""), markup=False)


def _inspect_run(run_dir: str) -> None:
    """``prunekit inspect RUN_DIR``: one column per cycle."""
    from rich.table import Table

    from ..run import inspect_run

    info = inspect_run(run_dir)
    r, cycles = info.recipe, info.cycles
    console = make_console()
    state = "finished" if info.finished else "not finished (no DONE)"
    console.print(f"{run_dir}: {r.model.name} + {r.method['name']}, strategy {r.strategy.name}, data {r.data.name}; "
                  f"{len(cycles)} cycle{'s' if len(cycles) != 1 else ''} recorded, {state}")
    table = Table(title="neurons of every adapter while each cycle trained (- : removed)" if info.adapters else
                  "per cycle (this run prunes nothing)")
    table.add_column("", justify="left", no_wrap=True)
    for c in cycles:
        table.add_column(f"cycle {c['cycle']}", justify="right")
    for name, widths in zip(info.adapters, info.widths):
        table.add_row(name, *[str(w) if w else "-" for w in widths])
    if info.adapters:
        table.add_section()
        table.add_row("adapters", *[f"{sum(1 for w in col if w)}/{len(col)}" for col in zip(*info.widths)])
        table.add_row("neurons", *[str(sum(col)) for col in zip(*info.widths)])
        table.add_row("sigma", *["-" if c.get("sigma") is None else f"{c['sigma']:.1f}" for c in cycles])
    table.add_row("trainable", *[f"{c['trainable_params']:,}" for c in cycles])
    table.add_row("% of total", *[f"{100 * c['trainable_params'] / c['total_params']:.3f}" for c in cycles])
    table.add_row("last top-1", *[f"{100 * c['last_top1']:.2f}" for c in cycles])
    table.add_row("trained file", *info.file_sizes)
    console.print(table)
    for cycle, gone in info.removed.items():
        console.print(f"removed before cycle {cycle}: {len(gone)} adapter{'s' if len(gone) != 1 else ''} "
                      f"({', '.join(gone)})")


@main.command("list")
@click.argument("what", type=click.Choice(LISTABLE))
def list_(what):
    """What can be named in a recipe: strategies, scorers, scopes, methods, datasets, models, recipes.

    Entries that installed packages add (entry points prunekit.strategies, .scorers, .scopes, .methods, .datasets,
    .models) are listed with the built-in ones.
    """
    from ..run.catalog import catalog  # imports only the listed registry (strategies: no torch)

    if what != "recipes":
        for line in catalog(what):
            click.echo(line)
    else:
        click.echo("built-in (`prunekit run NAME` from any folder):")
        for p in builtin_recipes().values():
            click.echo(f"  {p.name:<38} {_description(p)}")
        local = Path("recipes")
        if local.is_dir() and local.resolve() != builtin_recipes_dir():
            click.echo("in ./recipes:")
            for p in sorted(local.rglob("*.yaml")):
                click.echo(f"  {str(p):<38} {_description(p)}")


def _description(path: Path) -> str:
    from ..recipe.spec import read_yaml

    try:
        data = read_yaml(path)
    except PrunekitError as e:
        return f"(unreadable: {e})"
    desc = data.get("description", "") if isinstance(data, dict) else ""
    first = str(desc).strip().splitlines()[0] if desc else ""
    return first if len(first) <= 90 else first[:87].rstrip() + "..."


@main.command()
@click.option("--model", "model_name", default="swin_tiny_patch4_window7_224", show_default=True,
              help="timm model name (random weights, offline)")
@click.option("--classes", type=int, default=100, show_default=True, help="size of the classifier head")
@click.option("--method", "methods", multiple=True, help="only these methods (repeatable; default: every row)")
@click.option("--img-size", type=int, default=None, help="input size, for models that take it")
@click.option("--paper", type=click.Choice(["1", "2"]), default=None,
              help="add the paper's '# Params' column of Table 1 (345 classes) or Table 2 (100 classes)")
def params(model_name, classes, methods, img_size, paper):
    """Trainable parameters and % of the total of every method on one backbone."""
    from rich.table import Table

    from ..run import param_rows

    rows = param_rows(model_name, classes, list(methods), img_size, int(paper) if paper else None)
    table = Table(title=f"{model_name}, {classes} classes: trainable parameters")
    for col in ("method", "name", "trainable", "% of total") + (("paper (M)",) if paper else ()):
        table.add_column(col, justify="left" if col in ("method", "name") else "right", no_wrap=True)
    for r in rows:
        cells = [r.label, r.method, f"{r.trainable:,}", f"{r.percent:.2f}"]
        if paper:
            cells.append("-" if r.paper_m is None else f"{r.paper_m:.2f}")
        table.add_row(*cells)
    make_console().print(table)
    if rows:
        click.echo(f"total parameters with the head: {rows[0].total:,} (adapters and prompts add to it)")


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--cycle", type=int, default=None, help="training cycle to reload (default: the last)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def eval_(run_dir, cycle, as_json):
    """Rebuild backbone + adapters of RUN_DIR at a cycle and re-measure validation top-1.

    \b
    Exit codes: 0 the re-measured top-1 matches the recorded one; 3 it does not (MISMATCH; with --json, "match":
    false); 2 RUN_DIR or its files cannot be used (error: ... says which); 1 an unexpected failure (a bug).
    """
    from ..run import evaluate_run

    res = evaluate_run(run_dir, cycle)
    if as_json:
        click.echo(json.dumps(res))
    else:
        click.echo(f"cycle {res['cycle']}: top-1 {100 * res['top1']:.2f}% (recorded at the end of training: "
                   f"{100 * res['recorded_last_top1']:.2f}%){'' if res['match'] else '  MISMATCH'}")
    if not res["match"]:
        sys.exit(EXIT_MISMATCH)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx", "torch_export"]), default="torchscript",
              show_default=True, help="onnx needs pip install 'prunekit[export]'; torch_export: an ExportedProgram "
              "(.pt2, torch.export.load)")
@click.option("--cycle", type=int, default=None, help="training cycle to export (default: the last)")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="file to write (default: RUN_DIR/export/cycle_K.pt, .onnx or .pt2)")
@click.option("--overwrite", is_flag=True, help="replace an existing file")
def export(run_dir, fmt, cycle, out, overwrite):
    """Write RUN_DIR's model (backbone + adapters or pruned structure + head) as one TorchScript, ONNX or
    torch.export file.

    \b
    The file is checked against PyTorch on a batch of another size than the traced one (the batch stays dynamic);
    outputs further apart than 1e-4 are an error.
    """
    from ..run import export_run

    res = export_run(run_dir, format=fmt, cycle=cycle, out=out, overwrite=overwrite)
    click.echo(f"cycle {res['cycle']}: wrote {res['path']} ({res['bytes']:,} bytes, {res['format']} via "
               f"{res['exporter']}); max |exported - PyTorch| = {res['max_abs_diff']:.2e} on a batch of "
               f"{res['parity_batch']}")


from .ablate import ablate  # noqa: E402 - commands of their own modules, on the group above
from .tasks import predict, serve  # noqa: E402

main.add_command(ablate)
main.add_command(predict)
main.add_command(serve)

if __name__ == "__main__":
    main()
