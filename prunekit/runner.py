"""Run a recipe: backbone -> method -> data -> engine (or plain cycles) -> run directory.

``run_recipe`` is what ``prunekit run`` calls; ``build_model`` and ``load_run`` are shared with ``inspect``, ``eval``
and the dry run, so a run directory always rebuilds into the model that wrote it.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from .backbone import check_model_name, create_backbone, load_backbone_weights, load_checkpoint_file
from .data import DATASETS, load_data, make_loaders
from .engine import Engine
from .adapters import adapter_groups
from .methods import build_method
from .params import count_parameters
from .plan import Plan, replay
from .progress import ProgressReporter
from .recipe import Recipe, RecipeError, load_recipe, recipe_to_dict
from .registry import PrunekitError
from .report import COLUMNS, cycle_rows, markdown_table, plot_widths, human_bytes
from . import distributed as dist_utils
from .resume import (STATE_FILE, check_provenance, load_model_state, load_state, model_state, recipe_digest,
                     save_state)
from .rundir import RunDir, RunWriteError, check_run_name, run_directory, save_safetensors, written_by_prunekit
from .runlock import RunLockedError, describe_holder, holder_of
from .schedule import compression
from .scopes import get_scope
from .scorers import get_scorer
from .strategy import get_strategy
from .train import Trainer, seed_everything, select_device

__all__ = ["RunResult", "RunFinished", "NothingToResume", "check_recipe", "build_model", "run_recipe", "dry_run",
           "load_run", "evaluate_run", "num_classes_for", "example_inputs"]


@dataclass
class RunResult:
    run_dir: Path | None
    cycles: list[dict[str, Any]] = field(default_factory=list)
    backbone_bytes: int = 0


def check_recipe(recipe: Recipe):
    """Resolve every name in the recipe (with did-you-mean errors) before anything heavy happens.

    Also refuses a method that freezes the backbone (``Method.freezes_backbone``) on random weights unless the recipe
    says ``model.allow_random_backbone: true``. Returns the method, its config and the strategy (None: 'none').
    """
    check_model_name(recipe.model.name)
    method, method_cfg = build_method(recipe.method)
    strategy = None
    if recipe.strategy.name != "none":
        try:
            strategy = get_strategy(recipe.strategy.name)
        except KeyError as e:
            raise RecipeError(f"strategy.name: {e} (or 'none')") from None
        for part, get in (("scorer", get_scorer), ("scope", get_scope)):  # a plug-in strategy may name unknown ones
            try:
                get(getattr(strategy, part))
            except KeyError as e:
                raise RecipeError(f"strategy.name: strategy {strategy.name!r} names an {e}") from None
        if not method.prunable:
            raise RecipeError(f"strategy.name: {strategy.name!r} prunes adapters, but method {method.name!r} has no "
                              "prunable groups; use method adapters or parallel_adapters, or strategy 'none'")
        sigma = getattr(method_cfg, "sigma", None)
        if sigma is not None and strategy.mode == "iterative" and not recipe.strategy.sigma_target > sigma:
            raise RecipeError(f"strategy.sigma_target: expected more than method.sigma={sigma:g} (pruning only "
                              f"raises sigma), got {recipe.strategy.sigma_target:g}")
    try:
        DATASETS.get(recipe.data.name)
    except KeyError as e:
        raise RecipeError(f"data.name: {e}") from None
    m = recipe.model
    if method.freezes_backbone and not (m.checkpoint or m.pretrained or m.allow_random_backbone):
        raise RecipeError(
            f"model: method {method.name!r} freezes the backbone, but {m.name!r} would keep its random initial "
            "weights (no model.checkpoint, model.pretrained: false): training on frozen random features is "
            "meaningless. Set model.checkpoint (with model.pretrain to make it) or model.pretrained: true; or "
            "model.allow_random_backbone: true to do it on purpose (tests, smoke runs)")
    return method, method_cfg, strategy


def num_classes_for(recipe: Recipe, bundle=None) -> int:
    if bundle is not None:
        return bundle.num_classes
    n = DATASETS.get(recipe.data.name).num_classes
    if n is None:
        raise PrunekitError(f"data.name={recipe.data.name}: the number of classes comes from the files; load the data")
    return n


def example_inputs(recipe: Recipe, device="cpu") -> torch.Tensor:
    return torch.zeros(1, recipe.model.in_chans, recipe.model.img_size, recipe.model.img_size, device=device)


def _start_sigma(recipe: Recipe, method_cfg, strategy) -> float | None:
    sigma = getattr(method_cfg, "sigma", None)
    if strategy is None or sigma is None:
        return sigma
    return strategy.initial_sigma(sigma, recipe.strategy.sigma_target, recipe.strategy.rho)


def build_model(recipe: Recipe, num_classes: int, random_weights: bool = False) -> nn.Module:
    """Backbone (hub or checkpoint weights unless ``random_weights``) with the recipe's method applied."""
    method, method_cfg, strategy = check_recipe(recipe)
    with torch.random.fork_rng(devices=[]):  # initial weights are a function of the recipe alone: a run dir rebuilds
        torch.manual_seed(recipe.train.seed)
        model = create_backbone(recipe.model, num_classes, pretrained=False if random_weights else None)
        _load_weights_and_apply_method(recipe, model, method, method_cfg, strategy, random_weights)
    return model


def _load_weights_and_apply_method(recipe, model, method, method_cfg, strategy, random_weights: bool) -> None:
    if recipe.model.checkpoint and not random_weights:
        sd = load_checkpoint_file(recipe.model.checkpoint)
        load_backbone_weights(model, sd, recipe.model.checkpoint, reset_head=recipe.model.reset_head)
    start = _start_sigma(recipe, method_cfg, strategy)
    if start is not None and start != getattr(method_cfg, "sigma", None):
        method_cfg.sigma = start  # one-shot: one prune of rho from here lands on sigma_target
    method.apply(model, method_cfg)


def _resolve_checkpoint(recipe: Recipe, out_parent: Path, reporter: ProgressReporter) -> None:
    """Run ``model.pretrain`` when ``model.checkpoint`` does not exist yet (after checking everything else)."""
    ckpt = recipe.model.checkpoint
    if not ckpt or Path(ckpt).expanduser().exists():
        return
    if not recipe.model.pretrain:
        raise PrunekitError(f"model.checkpoint: no such file {ckpt!r} (set model.pretrain to a recipe that makes it)")
    pre, pre_path = _check_before_pretraining(recipe)
    name = pre.output.run_name or pre.name
    try:
        check_run_name(name, "output.run_name" if pre.output.run_name else "name")
    except PrunekitError as e:
        raise RecipeError(f"model.pretrain: {pre_path.name}: {e}") from None
    run_name, i = name, 1
    while (out_parent / run_name).exists():
        i += 1
        run_name = f"{name}-{i}"
    run_name = dist_utils.broadcast_object(run_name)  # under torchrun, rank 0's choice (it creates the folder)
    reporter.log(f"checkpoint {ckpt} not found: pretraining it with {pre_path.name} (run dir "
                f"{out_parent / run_name})")
    pre.output.run_name = run_name
    run_recipe(pre, out=out_parent / run_name, reporter=reporter)
    if not Path(ckpt).expanduser().exists():
        raise PrunekitError(f"model.pretrain: {pre_path.name} finished without writing {ckpt}")


def _check_before_pretraining(recipe: Recipe) -> tuple[Recipe, Path]:
    """Pretraining writes a run directory and the checkpoint: first check the pretraining recipe, this recipe's
    data and its schedule (the ``--dry-run`` checks on random weights), so a bad recipe fails in seconds."""
    ckpt = recipe.model.checkpoint
    base = Path(recipe.source).parent if recipe.source else Path.cwd()
    pre_path = (base / recipe.model.pretrain).resolve()
    if not pre_path.is_file():
        raise RecipeError(f"model.pretrain: no such recipe {str(pre_path)!r} (paths are relative to the recipe's "
                          f"folder {str(base)!r}); it runs because model.checkpoint {ckpt!r} does not exist")
    try:
        pre = load_recipe(pre_path, [f"output.save_checkpoint={ckpt}"])
        check_recipe(pre)
    except PrunekitError as e:
        raise RecipeError(f"model.pretrain: {pre_path.name}: {e}") from None
    load_data(recipe.data, recipe.model.img_size, seed=recipe.train.seed, in_chans=recipe.model.in_chans)
    dry_run(recipe)
    return pre, pre_path


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _check_world(recipe: Recipe) -> None:
    world = dist_utils.world_size()
    if world > 1 and recipe.train.batch_size < world:
        raise RecipeError(f"train.batch_size: the global batch ({recipe.train.batch_size}) must be at least the "
                          f"number of processes ({world})")


def run_recipe(recipe: Recipe, out: str | Path | None = None, overwrite: bool = False,
               reporter: ProgressReporter | None = None, resume: bool = False) -> RunResult:
    """Train (and prune) as the recipe says; writes a run directory and returns its per-cycle summary.

    Everything that can be wrong with the recipe (names, checkpoint, data, schedule, the run directory and the
    checkpoint path) is found before the run directory is created, so a failed start writes nothing. The run
    directory is locked while this runs (see rundir.py, runlock.py); ``overwrite`` replaces only a prunekit run
    directory. ``resume=True`` continues the unfinished run in ``out`` from its ``resume.pt`` (see resume.py), after
    checking that it belongs to that run. Under ``torchrun`` every rank calls this; rank 0 alone writes, locks and
    prints.
    """
    with contextlib.ExitStack() as cleanup:
        return _run_recipe(recipe, out, overwrite, reporter, resume, cleanup)


def _run_recipe(recipe: Recipe, out: str | Path | None, overwrite: bool, reporter: ProgressReporter | None,
                resume: bool, cleanup: contextlib.ExitStack) -> RunResult:
    t, d = recipe.train, recipe.data
    device = select_device(t.device)
    device = dist_utils.init_from_env(device.type) or device
    main_rank = dist_utils.is_main()
    reporter = reporter or ProgressReporter()
    if not main_rank:
        reporter = ProgressReporter(enabled=False)
    method, method_cfg, strategy = check_recipe(recipe)
    _check_world(recipe)
    resolved = recipe_to_dict(recipe)
    run_path = Path(out) if out else run_directory(recipe.output.dir, recipe.output.run_name, recipe.name)
    rundir = RunDir(run_path, write=main_rank)
    cleanup.callback(rundir.close)  # removes temporary files of a failed write, releases the lock
    if resume:
        state = _resume_state(rundir, resolved)
    else:
        state = None
        _on_main_rank(lambda: RunDir.check_target(run_path, overwrite), run_path)  # says what is there, what to do
    _check_checkpoint_target(recipe)
    _resolve_checkpoint(recipe, run_path.parent, reporter)

    seed_everything(t.seed + dist_utils.rank(), t.deterministic)
    bundle = load_data(d, recipe.model.img_size, seed=t.seed, in_chans=recipe.model.in_chans,
                       **_norm_kwargs(recipe))
    model = build_model(recipe, bundle.num_classes).to(device)
    train_loader, val_loader = make_loaders(bundle, t.batch_size, t.eval_batch_size or 2 * t.batch_size,
                                            d.num_workers, t.seed, pin_memory=device.type == "cuda",
                                            distributed=dist_utils.is_distributed())
    trainer = Trainer(t, train_loader, val_loader, device, reporter,
                      on_epoch_end=lambda m: rundir.append_metrics({"type": "epoch", **m}))
    cycles: list[dict[str, Any]] = []
    engine = None

    def train_fn(model: nn.Module, optimizer, cycle: int) -> dict[str, Any]:
        reporter.start_cycle(cycle, n_cycles, f"trainable {count_parameters(model, True):,}")
        metrics = trainer.train_cycle(model, optimizer, cycle)
        widths = engine.widths() if engine is not None else {}
        summary = {"type": "cycle", "cycle": cycle, "widths": widths,
                   "sigma": engine.sigma(widths) if engine is not None else None,
                   "trainable_params": count_parameters(model, trainable_only=True),
                   "total_params": count_parameters(model),
                   "best_top1": metrics["best_top1"], "last_top1": metrics["last_top1"],
                   "adapter_file": None, "adapter_bytes": None, "images_per_s": metrics["images_per_s"]}
        if dist_utils.is_distributed():
            summary["rank_digests"] = _check_ranks_agree(model, widths, cycle)
        if recipe.output.save_adapters:
            path = rundir.adapter_file(cycle)
            nbytes = rundir.save_tensors(path, _trained_state(model), {"recipe": recipe.name, "cycle": cycle,
                                                                       "widths": json.dumps(widths)})
            summary.update(adapter_file=str(path.relative_to(rundir.path)), adapter_bytes=nbytes)
        cycles.append(summary)
        rundir.append_metrics(summary)
        return metrics

    if strategy is not None:
        calib = None
        if engine_needs_calibration(strategy):
            calib_loader = DataLoader(bundle.train, batch_size=t.batch_size, shuffle=False,
                                      collate_fn=bundle.collate_fn)
            k = recipe.strategy.calibration_batches
            calib = lambda: (b[0].to(device) for b in itertools.islice(calib_loader, k))  # noqa: E731
        with _strategy_keys():
            engine = Engine(model, train_fn, example_inputs=example_inputs(recipe, device), strategy=strategy,
                            rho=recipe.strategy.rho, sigma_target=recipe.strategy.sigma_target,
                            sigma_reference=recipe.strategy.sigma_reference, optimizer_factory=trainer.make_optimizer,
                            calibration=calib, seed=t.seed)
        n_cycles = engine.cycles
        _check_cycles(recipe, n_cycles)
        engine.add_callback("on_prune", lambda eng, plan: _on_prune(eng, plan, rundir, reporter))
    else:
        n_cycles = recipe.strategy.cycles

    if recipe.output.save_state:
        trainer.on_checkpoint = lambda tstate: _save_resume_state(rundir, tstate, model, engine, cycles, resolved)
    start_cycle = 0
    if state is not None:
        start_cycle = _restore(state, recipe, model, engine, trainer, rundir, cycles)
        reporter.log(f"resuming {run_path}: cycle {start_cycle}, after epoch {state['trainer']['epoch'] + 1} of "
                     f"{t.epochs}")
    else:
        dist_utils.barrier()  # every rank has checked the run directory before rank 0 creates it
        _on_main_rank(lambda: rundir.create(overwrite=overwrite), run_path)
        rundir.write_text("recipe.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
    if rundir.stale_lock:
        reporter.log(f"took over the lock of a writer that no longer runs ({describe_holder(rundir.stale_lock)})")
    backbone_bytes = _backbone_bytes(model)
    world = dist_utils.world_size()
    reporter.log(f"run {recipe.name}: {recipe.model.name} + {method.name}, data {bundle!r}, device {device}"
                 f"{' (bf16)' if trainer.bf16 else ''}{f' x {world} processes' if world > 1 else ''}, "
                 f"{n_cycles} cycles -> {run_path}")
    if engine is not None:
        engine.run(start_cycle)
        rundir.save_plans(engine.plans)
    else:
        for cycle in range(start_cycle, n_cycles):
            train_fn(model, trainer.make_optimizer([p for p in model.parameters() if p.requires_grad]), cycle)
        rundir.save_plans([])

    checkpoint_error = None
    if recipe.output.save_checkpoint and main_rank:
        checkpoint_error = _save_checkpoint(recipe, model, rundir, reporter)
    result = RunResult(rundir.path, cycles, backbone_bytes)
    if main_rank:
        write_report(rundir, recipe, result)
        if recipe.output.plot and strategy is not None:
            with rundir.writing("plots/neurons_per_adapter.png") as plot_path:
                plot_widths(cycles, plot_path, title=f"{recipe.name}: neurons per adapter")
        rundir.finish()
        rundir.remove(STATE_FILE)  # DONE is written: nothing left to resume
    dist_utils.barrier()  # a checkpoint rank 0 wrote is on disk before any rank goes on to use it
    reporter.log(markdown_table(COLUMNS, cycle_rows(cycles)))
    if checkpoint_error is not None:
        raise checkpoint_error
    return result


def _on_main_rank(fn, run_path: Path):
    """``fn()`` on rank 0 alone; an error it raises is raised on every rank, so no rank waits for the others."""
    result, error = None, None
    if dist_utils.is_main():
        try:
            result = fn()
        except PrunekitError as e:
            error = e
    failed = dist_utils.broadcast_object(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    if failed is not None:
        raise RunFinished(run_path) if failed[0] == "RunFinished" else PrunekitError(failed[1])
    return result


def _check_checkpoint_target(recipe: Recipe) -> None:
    """``output.save_checkpoint`` may replace only a file prunekit wrote, unless ``output.replace_checkpoint``."""
    if not recipe.output.save_checkpoint:
        return
    dest = Path(recipe.output.save_checkpoint).expanduser()
    if dest.is_dir():
        raise RecipeError(f"output.save_checkpoint: {str(dest)!r} is a folder; expected a file path, e.g. "
                          f"{str(dest / 'model.safetensors')!r}")
    if dest.exists() and not recipe.output.replace_checkpoint and not written_by_prunekit(dest):
        raise RecipeError(f"output.save_checkpoint: {str(dest)!r} exists and prunekit did not write it (its "
                          "safetensors metadata carries no prunekit mark); nothing was changed. Choose another path, "
                          "or set output.replace_checkpoint: true to replace it")
    where = dest.parent.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise RunWriteError(f"output.save_checkpoint: cannot write {str(dest)!r}: {where} is not writable (read-only "
                            "file system or no permission); nothing was changed")


def _save_checkpoint(recipe: Recipe, model: nn.Module, rundir: RunDir, reporter: ProgressReporter
                     ) -> PrunekitError | None:
    """Write ``output.save_checkpoint``. When it became impossible while the run trained (a foreign file appeared
    there, the folder became read-only), keep the weights in the run directory instead and return the error to raise
    once the run is finished."""
    dest = Path(recipe.output.save_checkpoint).expanduser()
    meta = {"recipe": recipe.name, "model": recipe.model.name, "run_id": rundir.run_id or ""}
    try:
        _check_checkpoint_target(recipe)
    except PrunekitError as e:
        kept = rundir.file("checkpoint.safetensors")
        rundir.save_tensors(kept, model.state_dict(), meta)
        return PrunekitError(f"{e} (found when the run finished: the path was fine when it started); the weights "
                             f"were saved to {kept} instead")
    save_safetensors(dest, model.state_dict(), meta)
    reporter.log(f"saved checkpoint {dest}")
    return None


def _resume_state(rundir: RunDir, resolved: dict[str, Any]) -> dict[str, Any]:
    """The saved state of the unfinished run in ``rundir``, checked against its recipe and its files.

    Rank 0 checks (reading only, so a refusal changes nothing, not even the lock file), then locks the run directory
    and makes sure nothing changed in between.
    """
    state_path = rundir.file(STATE_FILE)
    metrics = rundir.file("metrics.jsonl")

    def stamp() -> list[tuple[int, int] | None]:
        return [(p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                for p in (state_path, metrics, rundir.file(RunDir.DONE))]

    def open_and_check() -> dict[str, Any]:
        rundir.require_run("--resume: ")
        if rundir.finished:
            raise RunFinished(rundir.path)
        holder = holder_of(rundir.path)
        if holder is not None:
            raise RunLockedError(rundir.path, holder)
        if not state_path.exists():
            raise NothingToResume(rundir)
        before = stamp()
        state = load_state(state_path)
        check_provenance(state, state_path, resolved, rundir.run_id,
                         metrics.stat().st_size if metrics.is_file() else None, rundir.metrics_digest)
        rundir.open_for_resume()
        if stamp() != before:
            raise PrunekitError(f"--resume: {rundir.path} changed while it was being checked (another process wrote "
                                "it); nothing was changed. Try again")
        return state

    state = _on_main_rank(open_and_check, rundir.path)
    return state if dist_utils.is_main() else load_state(state_path)


class NothingToResume(PrunekitError):
    """``--resume`` of an unfinished run without ``resume.pt``: everything is kept, and the message says how far the
    run got."""

    def __init__(self, rundir: RunDir):
        path = rundir.path
        super().__init__(f"--resume: {path} has no {STATE_FILE} (output.save_state was false, or the file was "
                         f"removed), so it cannot continue; nothing was changed. It got this far: {rundir.progress()}. "
                         f"`prunekit eval {path} --cycle K` checks a finished cycle; `prunekit run "
                         f"{path / 'recipe.resolved.yaml'} --out {path} --overwrite` starts it again from the "
                         "beginning")
        self.path = path


class RunFinished(PrunekitError):
    """``--resume`` of a run that already finished: nothing to do."""

    def __init__(self, path: Path):
        super().__init__(f"{path} already finished (DONE is written); nothing to resume. `prunekit eval {path}` "
                         "checks it; --overwrite with the recipe runs it again")
        self.path = path


def _save_resume_state(rundir: RunDir, tstate: dict[str, Any], model: nn.Module, engine: Engine | None,
                       cycles: list[dict[str, Any]], resolved: dict[str, Any]) -> None:
    rng = dist_utils.all_gather_object(tstate.pop("rng"))  # every rank's RNG, so each continues its own stream
    if not rundir.write:
        return
    metrics_bytes = rundir.file("metrics.jsonl").stat().st_size
    with rundir.writing(STATE_FILE) as path:
        save_state(path, {
            "trainer": tstate, "rng": rng, "model": model_state(model),
            "engine": None if engine is None else engine.state_dict(), "cycles": cycles,
            "metrics_bytes": metrics_bytes, "metrics_sha256": rundir.metrics_digest(metrics_bytes),
            "world_size": dist_utils.world_size(), "recipe": resolved, "recipe_digest": recipe_digest(resolved),
            "run_id": rundir.run_id})


def _restore(state: dict[str, Any], recipe: Recipe, model: nn.Module, engine: Engine | None, trainer: Trainer,
             rundir: RunDir, cycles: list[dict[str, Any]]) -> int:
    """Bring a freshly built model, engine and trainer to the saved state; returns the cycle to continue."""
    ts = state["trainer"]
    if engine is not None:
        engine.load_state_dict(state["engine"])
        replay(model, [r.plan for r in engine.history if r.plan is not None], example_inputs(recipe, trainer.device))
    load_model_state(model, state["model"], rundir.file(STATE_FILE))
    model.to(trainer.device)
    rngs = state["rng"]
    r = dist_utils.rank()
    trainer.resume_from = {**ts, "rng": rngs[r] if r < len(rngs) else rngs[0]}
    cycles.extend(state["cycles"])
    rundir.truncate_metrics(state["metrics_bytes"])  # drop what was logged after the saved state
    return ts["cycle"]


def _check_ranks_agree(model: nn.Module, widths: dict[str, int], cycle: int) -> list[str]:
    """Digest of every rank's trained weights and widths; they must be identical after a cycle of DDP training."""
    digests = dist_utils.all_gather_object(dist_utils.digest_tensors(_trained_state(model)) + ":"
                                           + json.dumps(widths, sort_keys=True))
    if len(set(digests)) > 1:
        raise PrunekitError(f"cycle {cycle}: ranks disagree after training (weight / width digests {digests}); "
                            "check that every rank runs the same recipe and prunekit version")
    return [dg.split(":", 1)[0] for dg in digests]


def _on_prune(engine: Engine, plan: Plan, rundir: RunDir, reporter: ProgressReporter) -> None:
    rundir.save_plans(engine.plans + [plan])
    removed = plan.meta.get("removed_adapters")
    reporter.log(f"pruned {plan.n_removed} neurons -> sigma {engine.sigma(engine.widths()):.1f}"
                 + (f"; removed {len(removed)} adapters" if removed else ""))


@contextlib.contextmanager
def _strategy_keys():
    """Schedule errors name ``sigma_target`` / ``rho``; in a recipe they are ``strategy.*`` keys."""
    try:
        yield
    except PrunekitError as e:
        msg = str(e)
        if msg.startswith(("sigma_target:", "rho:")):
            raise RecipeError(f"strategy.{msg}") from None
        raise


def engine_needs_calibration(strategy) -> bool:
    from .scorers import get_scorer, needs_activations

    return needs_activations(get_scorer(strategy.scorer))


def _check_cycles(recipe: Recipe, n_cycles: int) -> None:
    if recipe.strategy.cycles is not None and recipe.strategy.cycles != n_cycles:
        raise RecipeError(f"strategy.cycles: {recipe.strategy.name} needs {n_cycles} cycles to go from the method's "
                          f"sigma to sigma_target={recipe.strategy.sigma_target:g} with rho={recipe.strategy.rho}, "
                          f"got {recipe.strategy.cycles}; remove the key or set it to {n_cycles}")


def _norm_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Mean / std of the backbone's pretrained config (ImageNet's for random or unknown weights)."""
    import timm

    cfg = timm.get_pretrained_cfg(recipe.model.name)
    if cfg is None:
        return {}
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}


def _backbone_bytes(model: nn.Module) -> int:
    """Bytes of the frozen and trained weights as stored in float32 (what one full model copy per task costs)."""
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


def write_report(rundir: RunDir, recipe: Recipe, result: RunResult) -> None:
    cycles = result.cycles
    lines = [f"# {recipe.name}", "", recipe.description or "", "",
             f"- model: `{recipe.model.name}` ({'hub weights' if recipe.model.pretrained else recipe.model.checkpoint or 'random weights'}), "  # noqa: E501
             f"img {recipe.model.img_size}px",
             f"- method: `{recipe.method}`",
             f"- strategy: `{recipe.strategy.name}` rho={recipe.strategy.rho} sigma_target={recipe.strategy.sigma_target:g}",  # noqa: E501
             f"- data: `{recipe.data.name}`; train: {recipe.train.epochs} epochs per cycle "
             f"({recipe.train.warmup_epochs} warm-up), lr {recipe.train.lr:g}, batch {recipe.train.batch_size}, "
             f"seed {recipe.train.seed}",
             f"- whole model (one full copy per task): {human_bytes(result.backbone_bytes)}", "",
             markdown_table(COLUMNS, cycle_rows(cycles))]
    if cycles and cycles[-1].get("adapter_bytes"):
        ratio = result.backbone_bytes / cycles[-1]["adapter_bytes"]
        lines.append(f"The last cycle's trained-parameters file is {human_bytes(cycles[-1]['adapter_bytes'])}, "
                     f"{ratio:.0f}x smaller than a full model copy.\n")
    if recipe.output.plot and any(c.get("widths") for c in cycles):
        lines.append("![neurons per adapter](plots/neurons_per_adapter.png)\n")
    lines.append("Reproduce: `prunekit run <recipe> --out <dir>` with `recipe.resolved.yaml`; check a cycle with "
                 f"`prunekit eval {rundir.path} --cycle K`.\n")
    rundir.write_text("report.md", "\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# dry runs, reloading a run

def dry_run(recipe: Recipe) -> dict[str, Any]:
    """Validate and plan without data or hub weights: model with random weights, groups and the schedule."""
    method, method_cfg, strategy = check_recipe(recipe)
    n_classes = DATASETS.get(recipe.data.name).num_classes or 1000
    model = build_model(recipe, n_classes, random_weights=True)
    info: dict[str, Any] = {
        "model": recipe.model.name, "method": method.name, "classes": n_classes,
        "total_params": count_parameters(model), "trainable_params": count_parameters(model, trainable_only=True),
        "strategy": recipe.strategy.name, "data": recipe.data.name,
    }
    if strategy is not None:
        groups = adapter_groups(model, example_inputs(recipe))
        engine_like = strategy.schedule(recipe.strategy.rho, recipe.strategy.sigma_target,
                                        recipe.strategy.sigma_reference)
        n0, fan = sum(g.width for g in groups), sum(g.fan for g in groups)
        with _strategy_keys():
            widths = engine_like.widths(n0, fan)
            cycles = engine_like.cycles(n0, fan)
        _check_cycles(recipe, cycles)
        info.update(groups=len(groups), sigma0=compression(fan, n0), total_fan=fan, cycles=cycles,
                    widths_after_prunes=widths[1:], sigmas=[compression(fan, w) for w in widths],
                    scorer=str(strategy.scorer), scope=str(strategy.scope), mode=strategy.mode)
    else:
        info.update(cycles=recipe.strategy.cycles)
    info["epochs_total"] = info["cycles"] * recipe.train.epochs
    return info


def load_run(run_dir: str | Path, cycle: int | None = None) -> tuple[Recipe, nn.Module, dict[str, Any]]:
    """Rebuild the model of a run directory as it was at the end of training cycle ``cycle`` (default: last).

    A damaged run directory (a truncated or edited ``recipe.resolved.yaml``, ``metrics.jsonl`` or ``plan.json``, a
    missing or corrupt adapter file) raises :class:`PrunekitError` naming the file and what is wrong with it.
    """
    rd = RunDir(run_dir)
    recipe = _recipe_of_run(rd)
    done = [m for m in _run_metrics(rd) if m.get("type") == "cycle"]
    if not done:
        raise PrunekitError(f"{run_dir}: no finished cycle recorded in metrics.jsonl")
    cycle = done[-1]["cycle"] if cycle is None else cycle
    rec = next((m for m in done if m["cycle"] == cycle), None)
    if rec is None:
        raise PrunekitError(f"--cycle: {cycle} not recorded in {run_dir}; recorded: {[m['cycle'] for m in done]}")
    if not rec.get("adapter_file"):
        raise PrunekitError(f"{run_dir}: cycle {cycle} saved no trained parameters (output.save_adapters: false)")
    adapter_path = rd.path / rec["adapter_file"]
    trained = _read_adapter_file(adapter_path, cycle)
    model = build_model(recipe, _classes_from_tensors(trained, recipe))
    plan_path = rd.file("plan.json")
    try:
        plans = Plan.load_all(plan_path)[:cycle]
    except FileNotFoundError:
        raise PrunekitError(f"{plan_path}: missing; the run directory is incomplete (plan.json records the prunes "
                            "that cycles after the first need)") from None
    except (OSError, ValueError, PrunekitError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PrunekitError(f"{plan_path}: not a readable plan file ({type(e).__name__}: {str(e)[:200]}); "
                            "truncated or edited?") from None
    if len(plans) < cycle:
        raise PrunekitError(f"{plan_path}: holds {len(plans)} plans, cycle {cycle} needs {cycle}; truncated or from "
                            "another run?")
    try:
        replay(model, plans, example_inputs(recipe))
        result = model.load_state_dict(trained, strict=False)
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise PrunekitError(f"{run_dir}: plan.json and {rec['adapter_file']} do not fit the model of "
                            f"recipe.resolved.yaml ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if result.unexpected_keys:
        raise PrunekitError(f"{rec['adapter_file']} does not fit the rebuilt model: unexpected "
                            f"{result.unexpected_keys[:3]}")
    missing_trained = [n for n, p in model.named_parameters() if p.requires_grad and n not in trained]
    if missing_trained:
        raise PrunekitError(f"{rec['adapter_file']} lacks trained parameters {missing_trained[:3]}")
    return recipe, model, rec


def _recipe_of_run(rd: RunDir) -> Recipe:
    """The recipe a run directory was trained with, validated as any recipe is."""
    from .recipe import parse_section, read_yaml

    path = rd.resolved_recipe()
    data = read_yaml(path, "resolved recipe")
    if not isinstance(data, dict):
        raise PrunekitError(f"{path}: expected a mapping of sections, got {'nothing' if data is None else data!r:.60}"
                            "; truncated or edited?")
    try:
        recipe = parse_section(Recipe, data)
    except RecipeError as e:
        raise PrunekitError(f"{path}: {e}") from None
    # The run has trained already: refusing a random frozen backbone is for starting runs, not for reloading one.
    recipe.model.allow_random_backbone = True
    return recipe


_CYCLE_KEYS = ("cycle", "last_top1")  # what reloading and evaluating a cycle read from its metrics record


def _run_metrics(rd: RunDir) -> list[dict[str, Any]]:
    """``metrics.jsonl``, every line checked: a truncated or edited line is named (file, line) instead of crashing."""
    path = rd.file("metrics.jsonl")
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{path}: not readable ({type(e).__name__}: {e})") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            last = " (the last line: a write cut short by a crash?)" if i == len(lines) else ""
            raise PrunekitError(f"{path}: line {i} is not a JSON record{last}: {e.msg} at column {e.colno}: "
                                f"{line[:80]!r}") from None
        if not isinstance(record, dict):
            raise PrunekitError(f"{path}: line {i} is not a JSON object: {line[:80]!r}")
        if record.get("type") == "cycle":
            lacking = [k for k in _CYCLE_KEYS if k not in record]
            if lacking or not isinstance(record["cycle"], int) or not isinstance(record["last_top1"], (int, float)):
                raise PrunekitError(f"{path}: line {i}: a cycle record needs an integer 'cycle' and a number "
                                    f"'last_top1', got {line[:120]!r}")
        records.append(record)
    return records


def _read_adapter_file(path: Path, cycle: int) -> dict[str, torch.Tensor]:
    """The trained parameters of a cycle; a missing or unreadable file is a named error."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise PrunekitError(f"{path}: missing; metrics.jsonl records it as cycle {cycle}'s trained parameters "
                            "(deleted or moved?)")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError) on bad bytes
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise PrunekitError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {detail}); corrupt "
                            "or truncated") from None


def _classes_from_tensors(trained: dict[str, torch.Tensor], recipe: Recipe) -> int:
    for key, value in trained.items():
        if key.split(".")[0] in ("head", "fc", "classifier") and key.endswith("bias"):
            return value.shape[0]
    return num_classes_for(recipe)


def evaluate_run(run_dir: str | Path, cycle: int | None = None) -> dict[str, Any]:
    """Reload backbone + trained parameters of a cycle and measure top-1 on the validation set."""
    recipe, model, rec = load_run(run_dir, cycle)
    t = recipe.train
    seed_everything(t.seed, t.deterministic)
    device = select_device(t.device)
    bundle = load_data(recipe.data, recipe.model.img_size, seed=t.seed, in_chans=recipe.model.in_chans,
                       **_norm_kwargs(recipe))
    _, val_loader = make_loaders(bundle, t.batch_size, t.eval_batch, 0, t.seed)
    trainer = Trainer(t, None, val_loader, device)
    top1 = trainer.evaluate(model)["top1"]
    epochs = [m for m in _run_metrics(RunDir(run_dir)) if m.get("type") == "epoch" and m.get("cycle") == rec["cycle"]]
    return {"cycle": rec["cycle"], "top1": top1, "recorded_last_top1": rec["last_top1"],
            "recorded_epochs": len(epochs), "match": math.isclose(top1, rec["last_top1"], abs_tol=1e-9)}
