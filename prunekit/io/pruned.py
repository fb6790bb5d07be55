"""Save and load a pruned model as data: plans as JSON, weights as safetensors; no pickle, no custom classes.

::

    plan = pk.prune(model, x, ratio=0.5)
    pk.save_pruned(model, "out/resnet50-half")             # plans recorded by prune(), or plans=[...]
    fresh = timm.create_model("resnet50", num_classes=10)  # the same architecture, unpruned
    model = pk.load_pruned("out/resnet50-half", fresh)     # replays the plans, loads the weights

The directory holds ``prunekit.json`` (format tag, model class, the example input's shapes, every plan with the
group source and config that finds its groups again: ignore patterns, round_to, heads ...) and ``model.safetensors``
(the full state dict after pruning, with the module versions of ``state_dict()._metadata`` in its metadata).
Loading traces the fresh model on zeros of the recorded shapes, replays the plans in order (each is checked against
the model's groups before it cuts anything) and loads the weights strictly, with their module versions.
A model of another architecture fails with :class:`ArchitectureMismatchError`, naming the first group, key or shape
that differs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from ..atomic import atomic_write
from ..core.plan import Plan, applied_plans, input_spec, inputs_from_spec, record_applied
from ..engine.sources import DEFAULT_GROUP_SOURCE, groups_fn_from
from ..registry import PrunekitError
from .statedict import load_into, load_safetensors, versions_metadata, with_versions

__all__ = ["save_pruned", "load_pruned", "ArchitectureMismatchError", "FORMAT"]

FORMAT = "prunekit.pruned/1"
META_FILE = "prunekit.json"
WEIGHTS_FILE = "model.safetensors"


class ArchitectureMismatchError(PrunekitError, ValueError):
    """The model given to :func:`load_pruned` is not the (unpruned) architecture the directory was saved from."""


def save_pruned(model: nn.Module, directory: str | Path, plans: Iterable[Plan] | None = None, *,
                example_inputs: Any = None) -> Path:
    """Write ``model``'s plans and weights to ``directory`` (created); returns it.

    Args:
        model: the pruned model.
        directory: where ``prunekit.json`` and ``model.safetensors`` go.
        plans: the plans applied to the model, in order; default: those :func:`~prunekit.engine.oneshot.prune`, the
        engine
            or :func:`~prunekit.core.plan.replay` applied to this very model object.
        example_inputs: a batch for tracing at load time; default: the shapes recorded in the plans by ``prune``.
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
        if spec is None:
            raise PrunekitError("save_pruned: the plans do not record the example inputs' shapes; pass "
                                "example_inputs= (a batch the model accepts)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own = model.state_dict()
    state = with_versions({k: v.detach().to("cpu").contiguous().clone() for k, v in own.items()}, own)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, **versions_metadata(state)})
    meta = {"format": FORMAT, "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "example_inputs": spec, "plans": [p.to_dict() for p in plans],
            "params": sum(v.numel() for v in state.values())}
    atomic_write(directory / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return directory


def load_pruned(directory: str | Path, model: nn.Module) -> nn.Module:
    """Replay the saved plans on ``model`` (a freshly built, unpruned instance of the saved architecture) and load
    the saved weights into it, with the module versions they were saved with; returns it (in place)."""
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
    example = inputs_from_spec(meta["example_inputs"])
    for i, d in enumerate(meta["plans"]):
        plan = Plan.from_dict(d)
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
    saved = load_safetensors(directory / WEIGHTS_FILE)
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: saved {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in saved.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [f"missing keys {missing[:3]}" if missing else "",
                                         f"unexpected keys {unexpected[:3]}" if unexpected else "",
                                         f"shapes differ {shapes[:3]}" if shapes else ""]))
        raise ArchitectureMismatchError(f"load_pruned: the saved weights do not fit the replayed model ({detail})")
    load_into(model, saved, strict=True)
    return model
