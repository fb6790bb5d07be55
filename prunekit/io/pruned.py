"""Save and load a pruned model as data: plans as JSON, weights as safetensors; no pickle, no custom classes.

::

    plan = pk.prune(model, x, ratio=0.5)
    pk.save_pruned(model, "out/resnet50-half")             # plans recorded by prune(), or plans=[...]
    fresh = timm.create_model("resnet50", num_classes=10)  # the same architecture, unpruned
    model = pk.load_pruned("out/resnet50-half", fresh)     # resizes its modules (no tracing), loads the weights

The directory holds ``prunekit.json`` (format tag, model class, the example input's shapes, every plan with what it
changed module by module and the group source that finds its groups again, and ``native``: how the model reloads
without prunekit, ``timm.create_model(name, **kwargs)`` or transformers' class, or why it cannot) and
``model.safetensors`` (the full state dict after pruning, with the module versions of ``state_dict()._metadata`` in
its metadata; tensors the state dict leaves out, non-persistent buffers that pruning resized, go to
``buffers.safetensors``).

Loading does not trace: every plan records, per module, the tensors it resized and the attributes it changed
(:mod:`prunekit.core.structure`), so the fresh model's modules are resized directly and the weights loaded strictly,
with their module versions; a model whose forward cannot run at load time loads all the same. Files written before
plans recorded their changes (or by a plan that created a module) are loaded the older way: the fresh model is traced
on zeros of the recorded shapes and the plans replayed in order, each checked against the model's groups first.
A model of another architecture fails with :class:`ArchitectureMismatchError`, naming the first module, group, key
or shape that differs, before anything is changed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch import nn

from ..atomic import atomic_write
from ..core.plan import Plan, applied_plans, input_spec, inputs_from_spec, record_applied
from ..engine.sources import DEFAULT_GROUP_SOURCE, groups_fn_from
from ..registry import PrunekitError
from ..core.structure import check_resizable, replayable, resize
from .statedict import load_into, load_safetensors, versions_metadata, with_versions

__all__ = ["save_pruned", "load_pruned", "ArchitectureMismatchError", "FORMAT", "resize_to_plans"]

FORMAT = "prunekit.pruned/1"
META_FILE = "prunekit.json"
WEIGHTS_FILE = "model.safetensors"
BUFFERS_FILE = "buffers.safetensors"


class ArchitectureMismatchError(PrunekitError, ValueError):
    """The model given to :func:`load_pruned` is not the (unpruned) architecture the directory was saved from."""


def save_pruned(model: nn.Module, directory: str | Path, plans: Iterable[Plan] | None = None, *,
                example_inputs: Any = None) -> Path:
    """Write ``model``'s plans and weights to ``directory`` (created); returns it.

    Args:
        model: the pruned model.
        directory: where ``prunekit.json`` and ``model.safetensors`` go.
        plans: the plans applied to the model, in order; default: those :func:`~prunekit.engine.oneshot.prune`, the
            engine or :func:`~prunekit.engine.sources.replay` applied to this very model object.
        example_inputs: a batch's shapes to record, for tracing at load time should the plans not record their
            changes; default: the shapes recorded in the plans by ``prune`` (none needed for plans that record them).
    """
    from safetensors.torch import save_file

    plans = list(plans) if plans is not None else applied_plans(model)
    if not plans:
        raise PrunekitError("save_pruned: no plans for this model; pass plans= (what prune() returned, or "
                            "engine.plans)")
    if example_inputs is not None:
        spec = input_spec(example_inputs)
    else:
        spec = next((p.meta["example_inputs"] for p in plans if "example_inputs" in p.meta), None)
        if spec is None and not replayable(p.meta.get("structure") for p in plans):  # loading will trace
            raise PrunekitError("save_pruned: the plans do not record the example inputs' shapes; pass "
                                "example_inputs= (a batch the model accepts)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own = model.state_dict()
    state = with_versions({k: v.detach().to("cpu").contiguous().clone() for k, v in own.items()}, own)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, **versions_metadata(state)})
    extra = _resized_buffers(model, plans, own)
    if extra:
        save_file(extra, str(directory / BUFFERS_FILE), metadata={"format": FORMAT})
    elif (directory / BUFFERS_FILE).is_file() and _written_by_us(directory / BUFFERS_FILE):
        (directory / BUFFERS_FILE).unlink()  # a stale one from an earlier save into this directory
    meta = {"format": FORMAT, "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "example_inputs": spec, "plans": [p.to_dict() for p in plans],
            "params": sum(v.numel() for v in state.values()), "native": _native(model)}
    atomic_write(directory / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return directory


def _native(model: nn.Module) -> dict[str, Any]:
    """How the model reloads without prunekit (timm's kwargs, transformers' class), or why it cannot."""
    from ..native import NotNativeError, native_reload

    try:
        return native_reload(model)
    except NotNativeError as e:
        return {"problem": str(e)}


def _resized_buffers(model: nn.Module, plans: list[Plan], state: dict) -> dict:
    """Buffers the plans resized that ``state_dict()`` leaves out (non-persistent), by their names."""
    out = {}
    named = dict(model.named_buffers())
    for plan in plans:
        for name, shapes in plan.meta.get("structure", {}).get("tensors", {}).items():
            for t in shapes:
                key = f"{name}.{t}" if name else t
                if key not in state and key in named:
                    out[key] = named[key].detach().to("cpu").contiguous().clone()
    return out


def _written_by_us(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - not a safetensors file: not ours to delete
        return False


def load_pruned(directory: str | Path, model: nn.Module) -> nn.Module:
    """Resize ``model`` (a freshly built, unpruned instance of the saved architecture) to the saved one and load the
    saved weights into it, with the module versions they were saved with; returns it (in place). Nothing is traced
    unless the file predates recorded changes (module docstring)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise PrunekitError(f"load_pruned: {str(directory)!r} has no {META_FILE} (not written by save_pruned)")
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PrunekitError(f"load_pruned: {meta_path} is not a {FORMAT} file (format {meta.get('format')!r})")
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    if meta["model"] != cls:
        raise ArchitectureMismatchError(f"load_pruned: {str(directory)!r} holds a pruned {meta['model']}, got a "
                                        f"{cls}; build the same architecture (unpruned) and pass it")
    plans = [Plan.from_dict(d) for d in meta["plans"]]
    saved = load_safetensors(directory / WEIGHTS_FILE)
    instant = replayable(p.meta.get("structure") for p in plans)
    predicted = _predicted_shapes(model, plans) if instant else None
    if predicted is not None:  # the weights checked against the shapes the records will give, before any change
        _check_fits(predicted, saved, "the resized model would have")
    if instant:
        _resize_all(model, plans, directory)
    else:
        _replay_all(model, plans, inputs_from_spec(meta["example_inputs"]))
    if predicted is None:  # moved modules or replayed plans: checked on the model they made
        _check_fits({k: tuple(v.shape) for k, v in model.state_dict().items()}, saved, "the resized model has")
    load_into(model, saved, strict=True)
    if (directory / BUFFERS_FILE).is_file():
        import torch

        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for k, v in load_safetensors(directory / BUFFERS_FILE).items():
                buffers[k].copy_(v)
    return model


def _predicted_shapes(model: nn.Module, plans: list[Plan]) -> dict[str, tuple[int, ...]] | None:
    """The state dict's shapes after the plans' records (None when a plan moves modules: checked afterwards)."""
    if any(p.meta["structure"].get("moved") for p in plans):
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for p in plans:
        for name, tensors in p.meta["structure"].get("tensors", {}).items():
            for t, (_, after) in tensors.items():
                key = f"{name}.{t}" if name else t
                if key in shapes:
                    shapes[key] = tuple(after)
    return shapes


def _check_fits(shapes: Mapping[str, tuple[int, ...]], saved: Mapping[str, Any], what: str) -> None:
    missing = [k for k in shapes if k not in saved]
    unexpected = [k for k in saved if k not in shapes]
    wrong = [f"{k}: saved {tuple(v.shape)}, {what} {shapes[k]}" for k, v in saved.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [f"missing keys {missing[:3]}" if missing else "",
                                         f"unexpected keys {unexpected[:3]}" if unexpected else "",
                                         f"shapes differ {wrong[:3]}" if wrong else ""]))
        raise ArchitectureMismatchError(f"load_pruned: the saved weights do not fit the model ({detail}); nothing "
                                        f"was loaded")


def resize_to_plans(model: nn.Module, plans: list[Plan], source: str | Path) -> set[str]:
    """Resize ``model`` (fresh, unpruned) to what ``plans`` made of it, without tracing; returns the state-dict keys of
    the tensors left uninitialised, for the caller to load. Raises :class:`ArchitectureMismatchError` before changing
    anything when the first plan does not fit, and :class:`PrunekitError` when the plans did not record their
    changes (written before they did: replay them instead)."""
    if not replayable(p.meta.get("structure") for p in plans):
        raise PrunekitError(f"{source}: its plans do not record what they changed (written before they did); "
                            f"replay them instead")
    return _resize_all(model, plans, Path(source))


def _resize_all(model: nn.Module, plans: list[Plan], directory: Path) -> set[str]:
    """Every plan's recorded changes on ``model``, no tracing; the first plan is checked whole before anything
    changes (later ones apply to the model the earlier ones made). Returns the keys of the uninitialised tensors."""
    memo: dict = {}
    for i, plan in enumerate(plans):
        record = plan.meta["structure"]
        problems = check_resizable(model, record)
        if problems:
            raise ArchitectureMismatchError(
                f"load_pruned: plan {i} of {str(directory)!r} does not fit this model ({'; '.join(problems[:3])}); "
                f"is it the same architecture, built with the same arguments, and unpruned?")
        resize(model, record, memo)
        record_applied(model, plan)
    new = {id(t) for _, t in memo.values()}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in new}


def _replay_all(model: nn.Module, plans: list[Plan], example: Any) -> None:
    """The older way: trace ``model`` on ``example`` and replay the plans through its groups."""
    for i, plan in enumerate(plans):
        groups = groups_fn_from(plan.meta.get("groups", DEFAULT_GROUP_SOURCE))(model, example)
        found = {g.name: g.width for g in groups}
        missing = [k for k in plan.widths if k not in found]
        wrong = [f"{k}: saved {n}, model {found[k]}" for k, n in plan.widths.items() if k in found and found[k] != n]
        if missing or wrong:
            detail = f"groups missing: {missing[:3]}" if missing else f"widths differ: {wrong[:3]}"
            raise ArchitectureMismatchError(f"load_pruned: plan {i} does not fit this model ({detail}); is it the "
                                            f"same architecture, built with the same arguments, and unpruned?")
        plan.apply(model, groups)
        record_applied(model, plan)
