"""A task: what one trained run adds to a backbone that is already in memory.

A TINA run trains adapters and a head on a frozen backbone; its trained file (``RUN_DIR/adapters/cycle_K.safetensors``,
a few KB to a few hundred KB) holds exactly those::

    blocks.0.attn.adapter.down.weight  (n, m)     blocks.0.attn.adapter.up.weight  (m, n)     n: this run's width
    blocks.0.attn.adapter.down.bias    (n,)       blocks.0.attn.adapter.up.bias    (m,)       (0 < n; an emptied
    ...                                                                                         adapter is absent)
    head.weight (classes, d)  head.bias (classes,)

:func:`read_task` reads them with the run's recipe (no model is built), and the recipe says how each adapter
computes (series or parallel, activation, scale: the method's ``adapters`` hook) and which backbone it was trained
on (:class:`BackboneId`: architecture, input size and channels, normalisation, and the weights: the checkpoint
file's sha256, the hub's, or the seed that drew them: random weights depend on the head's size too).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import PrunekitError
from ..methods.base import METHODS, get_method
from ..models.backbone import normalization
from ..run.loading import read_trained
from ..run.task import image_transform

__all__ = ["BackboneId", "TaskAdapter", "TaskRun", "read_task", "backbone_id"]

_ADAPTER = ".adapter."  # the key infix of an adapter's tensors: POSITION.adapter.{down,up}.{weight,bias}


@dataclass(frozen=True)
class BackboneId:
    """What makes two runs' backbones the same: every field equal."""

    model: str
    kwargs: str  # model.kwargs as sorted JSON
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str  # "sha256:<hex> (<file>)", "hub:<model>" or "random:seed=<s>,classes=<c>"

    def differences(self, other: "BackboneId", mine: str, theirs: str) -> list[str]:
        """``field: value (mine), value (theirs)`` for every field that differs; ``mine`` / ``theirs`` name the runs."""
        return [f"{f.name} {getattr(self, f.name)} in {mine}, {getattr(other, f.name)} in {theirs}"
                for f in fields(self) if _key(f.name, getattr(self, f.name)) != _key(f.name, getattr(other, f.name))]


def _key(name: str, value: Any) -> Any:
    return value.split(" (")[0] if name == "weights" else value  # a checkpoint is its content, not its path


@dataclass
class TaskAdapter:
    """One trained adapter: ``r = scale * (up_weight @ act(down_weight @ h + down_bias) + up_bias)``, added to the
    sub-layer's output ``h`` (series) or to the sub-layer's output with ``h`` its input (parallel).

    Weights are 2-D whatever the layout (a 1x1 conv's ``(out, in, 1, 1)`` squeezed); ``layout`` says whether the
    adapter reads channels last ``(..., m)`` or channels first ``(B, m, H, W)``.
    """

    kind: str
    act: str
    scale: float
    layout: str
    down_weight: torch.Tensor  # (n, m)
    down_bias: torch.Tensor | None  # (n,)
    up_weight: torch.Tensor  # (m, n)
    up_bias: torch.Tensor | None  # (m,)

    @property
    def width(self) -> int:
        return self.down_weight.shape[0]

    @property
    def dim(self) -> int:
        return self.down_weight.shape[1]


@dataclass
class TaskRun:
    """A run as a task: its adapters (by position: the wrapped sub-layer's name), its head, its names.

    Attributes:
        source: the run directory or trained file it was read from.
        recipe: the run's recipe (its data set decides how images are read: :meth:`transform`).
        cycle: the training cycle whose parameters these are.
        classes: output names (None: shown as indices).
        adapters: position -> :class:`TaskAdapter`; positions whose adapter was pruned to zero are absent.
        head_name: the classifier module's name in the backbone (``head``, ``head.fc``, ``fc`` ...).
        head: the classifier's tensors (``weight`` ``(classes, d)``, ``bias``).
        backbone: what the run was trained on.
    """

    source: Path
    recipe: Any
    cycle: int | None
    classes: list[str] | None
    adapters: dict[str, TaskAdapter]
    head_name: str
    head: dict[str, torch.Tensor]
    backbone: BackboneId
    note: str = ""
    widths: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.head["weight"].shape[0]

    @property
    def parameters(self) -> int:
        """What the task adds to the backbone: its adapters' and head's numbers."""
        ts = [t for a in self.adapters.values() for t in (a.down_weight, a.down_bias, a.up_weight, a.up_bias)]
        return sum(t.numel() for t in ts + list(self.head.values()) if t is not None)

    def transform(self):
        """One image file (PIL) as the run's validation images were presented."""
        return image_transform(self.recipe)

    def class_name(self, k: int) -> str:
        return self.classes[k] if self.classes else str(k)


_HASHES: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256, per process


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def backbone_id(recipe: Any, where: str, classes: int) -> BackboneId:
    """The backbone a recipe builds: architecture, input, normalisation, and where its weights come from."""
    m = recipe.model
    if m.checkpoint:
        path = Path(m.checkpoint).expanduser()
        if not path.is_file():
            raise PrunekitError(f"{where}: its backbone checkpoint {m.checkpoint} (model.checkpoint) does not exist "
                                "on this machine; pass the backbone file: backbone=FILE (--backbone FILE)")
        weights = f"sha256:{_file_sha256(path)[:16]} ({path})"
    elif m.pretrained:
        weights = f"hub:{m.name}"
    else:
        weights = f"random:seed={recipe.train.seed},classes={classes}"  # the head's size shifts timm's init draws
    mean, std = normalization(m.name)
    return BackboneId(m.name, json.dumps(m.kwargs, sort_keys=True, default=str), m.img_size, m.in_chans,
                      tuple(mean), tuple(std), weights)


def read_task(source: str | Path, cycle: int | None = None, *, backbone: str | Path | None = None) -> TaskRun:
    """A run directory (its last cycle, or ``cycle``) or one trained file, read as a task.

    Args:
        source: a run directory or a trained file.
        cycle: the run's training cycle (default: its last).
        backbone: the backbone weights file, when it is not where the recipe's ``model.checkpoint`` says.

    Raises:
        PrunekitError: the run is not one of adapters and a head on a frozen backbone (another method, a run that
            prunes the backbone), or its files are damaged.
    """
    trained = read_trained(source, cycle)
    recipe, where = trained.recipe, str(source)
    if backbone is not None:
        recipe.model.checkpoint, recipe.model.pretrain, recipe.model.pretrained = str(backbone), None, False
    if recipe.strategy.groups == "backbone":
        raise PrunekitError(f"{where}: prunes its backbone (strategy.groups: backbone), so it cannot share one; "
                            "tasks share a backbone when they train adapters and a head on it")
    method = get_method(recipe.method_name)
    if method.adapters is None:
        sharing = ", ".join(sorted(n for n, m in METHODS.items() if m.adapters is not None))
        raise PrunekitError(f"{where}: method {method.name!r} does not train plain adapters; tasks share a backbone "
                            f"for the methods {sharing}")
    config = method.adapters(method.parse_config(recipe.method))
    adapters, rest = _adapters(trained.tensors, config, where)
    head_name, head = _head(rest, where)
    return TaskRun(Path(source), recipe, trained.cycle, trained.classes, adapters, head_name, head,
                   backbone_id(recipe, where, head["weight"].shape[0]), trained.note,
                   {p: a.width for p, a in adapters.items()})


def _adapters(tensors: dict[str, torch.Tensor], config: Any, where: str
              ) -> tuple[dict[str, TaskAdapter], dict[str, torch.Tensor]]:
    by_position: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, t in tensors.items():
        position, sep, part = key.partition(_ADAPTER)
        if sep:
            by_position.setdefault(position, {})[part] = t
        else:
            rest[key] = t
    adapters = {}
    for position, parts in by_position.items():
        unknown = sorted(set(parts) - {"down.weight", "down.bias", "up.weight", "up.bias"})
        if unknown or "down.weight" not in parts or "up.weight" not in parts:
            raise PrunekitError(f"{where}: the adapter at {position} holds {sorted(parts)}; a plain adapter holds "
                                "down.weight, up.weight (and their biases)")
        down, up = parts["down.weight"], parts["up.weight"]
        layout = "channels_first" if down.dim() == 4 else "channels_last"
        down, up = down.reshape(down.shape[0], -1), up.reshape(up.shape[0], -1)
        if up.shape != (down.shape[1], down.shape[0]):
            raise PrunekitError(f"{where}: the adapter at {position} has down {tuple(down.shape)} and up "
                                f"{tuple(up.shape)}; up should be {(down.shape[1], down.shape[0])}")
        adapters[position] = TaskAdapter(config.kind, config.act_layer, float(config.scale), layout, down,
                                         parts.get("down.bias"), up, parts.get("up.bias"))
    return adapters, rest


def _head(rest: dict[str, torch.Tensor], where: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The classifier: the one module whose ``weight`` (and ``bias``) are the file's tensors besides adapters."""
    modules = {k.rpartition(".")[0] for k in rest}
    if len(modules) != 1 or not {k.rpartition(".")[2] for k in rest} <= {"weight", "bias"} \
            or not any(k.endswith("weight") for k in rest):
        raise PrunekitError(f"{where}: trains more than adapters and one classifier ({sorted(rest)[:4]}); tasks "
                            "share a backbone only when everything else stays as loaded")
    name = modules.pop()
    head = {k.rpartition(".")[2]: t for k, t in rest.items()}
    if head["weight"].dim() != 2:
        raise PrunekitError(f"{where}: its classifier {name} has a weight of shape {tuple(head['weight'].shape)}; "
                            "a Linear classifier (classes, features) is what tasks can share a backbone with")
    return name, head
