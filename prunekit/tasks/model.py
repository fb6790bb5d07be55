"""Many tasks, one backbone: trained runs attached by name to one frozen backbone in memory.

::

    model = prunekit.load_tasks(["runs/pets", "runs/flowers", "runs/cars"])     # one backbone + 3 tasks' adapters
    out = model(x, tasks=["pets", "cars", "pets", "flowers"])                # one backbone pass, mixed tasks
    out[1]                     # sample 1's logits under 'cars' (its own classes), = prunekit.load("runs/cars")(x[1:2])
    out.top_k(3)               # per sample: [(label, name, probability), ...]
    model(x, tasks="pets")     # a plain (B, classes) tensor
    model.add_task("runs/dogs", name="dogs"); model.remove_task("cars")       # the other tasks are not touched

Runs attach when their backbones are the same (:class:`~prunekit.tasks.source.BackboneId`: architecture, input size,
channels, normalisation, weights); a run trained on another is refused naming both. Every check runs before the
model changes. Forwards and changes take one lock, so a server may add a task between two batches.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core.wrapper import set_submodule
from ..errors import PrunekitError, UnknownNameError, did_you_mean
from ..run.build import build_backbone
from .layers import AdapterBank, Router, TaskAdapterLayer, TaskHeads
from .source import TaskRun, read_task

__all__ = ["MultiTaskModel", "TaskLogits", "TaskExistsError", "default_name", "load_tasks"]


class TaskExistsError(PrunekitError, ValueError):
    """A task name that is taken."""


@dataclass
class TaskLogits:
    """A mixed-task batch's output.

    Attributes:
        padded: ``(B, C_max)`` logits, ``-inf`` past each sample's own classes.
        tasks: each sample's task.
        classes: each sample's number of classes.
        names: task -> class names (None: indices).
    """

    padded: torch.Tensor
    tasks: list[str]
    classes: list[int]
    names: dict[str, list[str] | None]

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, b: int) -> torch.Tensor:
        """Sample b's logits over its own task's classes."""
        return self.padded[b, :self.classes[b]]

    def top_k(self, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Per sample, its ``min(k, classes)`` most probable classes: ``(label, name, probability)``."""
        probs = self.padded.float().softmax(-1).cpu()
        out = []
        for b, (task, c) in enumerate(zip(self.tasks, self.classes)):
            p, idx = probs[b, :c].topk(min(k, c))
            names = self.names.get(task)
            out.append([(i, names[i] if names else str(i), q) for i, q in zip(idx.tolist(), p.tolist())])
        return out


class MultiTaskModel(nn.Module):
    """A frozen backbone and the adapters and heads of several tasks (module docstring)."""

    def __init__(self, backbone: nn.Module, first: TaskRun, name: str):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.router = Router()
        self.runs: dict[str, TaskRun] = {}
        self.banks: dict[str, AdapterBank] = {}  # position -> bank (also a submodule of its TaskAdapterLayer)
        self.lock = threading.RLock()  # forwards and task changes, one at a time
        self._head_name = first.head_name
        head = backbone.get_submodule(first.head_name)
        if not isinstance(head, nn.Linear):
            raise PrunekitError(f"{first.source}: the backbone's classifier {first.head_name} is a "
                                f"{type(head).__name__}; tasks share a backbone with a Linear classifier")
        self._features = head.in_features
        self.heads = TaskHeads(self.router)
        set_submodule(self.backbone, first.head_name, self.heads)
        self.add_task(first, name=name)

    @property
    def tasks(self) -> list[str]:
        """The task names, in the order they were added."""
        return list(self.runs)

    def forward(self, x: torch.Tensor, tasks: str | Sequence[str]) -> torch.Tensor | TaskLogits:
        """Logits of ``x`` under one task (a ``(B, classes)`` tensor) or one task per sample (:class:`TaskLogits`)."""
        names = [tasks] * x.shape[0] if isinstance(tasks, str) else list(tasks)
        if len(names) != x.shape[0]:
            raise PrunekitError(f"tasks: {len(names)} names for a batch of {x.shape[0]} samples; give one per sample "
                                "or one for all")
        with self.lock:
            slot = {n: self._slot(n) for n in set(names)}
            slots = [slot[n] for n in names]
            self.router.index = torch.tensor(slots, device=x.device)
            self.router.present = sorted(set(slots))
            try:
                out = self.backbone(x)
            finally:
                self.router.index, self.router.present = None, []
            if isinstance(tasks, str):
                return out
            return TaskLogits(out, names, [self.runs[n].num_classes for n in names],
                              {n: self.runs[n].classes for n in set(names)})

    def _slot(self, name: str) -> int:
        if name not in self.runs:
            raise UnknownNameError(f"task: unknown task {name!r};{did_you_mean(name, list(self.runs))} tasks: "
                                f"{', '.join(self.runs)}")
        return list(self.runs).index(name)

    def task(self, name: str) -> nn.Module:
        """A module computing task ``name`` alone: ``model.task('pets')(x)`` is ``model(x, tasks='pets')``."""
        self._slot(name)
        return _OneTask(self, name)

    def add_task(self, run: TaskRun | str | Path, name: str | None = None, *, cycle: int | None = None,
                 backbone: str | Path | None = None) -> str:
        """Attach a run (a :class:`TaskRun`, a run directory or a trained file); returns its name (default: the run
        directory's name, or the trained file's stem). Checked first: the name is free, the backbone the same, every
        adapter fits its position. The other tasks' outputs do not change."""
        if not isinstance(run, TaskRun):
            run = read_task(run, cycle, backbone=backbone)
        name = name or default_name(run.source)
        with self.lock:
            self._check(run, name)
            for position, adapter in run.adapters.items():  # every check passed: now change the model
                if position not in self.banks:
                    self._wrap(position, adapter)
            head = nn.Linear(self._features, run.num_classes, bias="bias" in run.head)
            head.weight.data.copy_(run.head["weight"])
            if "bias" in run.head:
                head.bias.data.copy_(run.head["bias"])
            self.heads.heads.append(head.requires_grad_(False).to(self._device()))
            self.runs[name] = run
            self._restack()
        return name

    def remove_task(self, name: str) -> None:
        """Detach task ``name``; positions no task uses any more get their bare sub-layer back."""
        with self.lock:
            slot = self._slot(name)
            if len(self.runs) == 1:
                raise PrunekitError(f"task: {name!r} is the only task; a model keeps at least one")
            del self.runs[name]
            del self.heads.heads[slot]
            for position in [p for p in self.banks if not any(p in r.adapters for r in self.runs.values())]:
                layer = self.backbone.get_submodule(position)
                set_submodule(self.backbone, position, layer.base_layer)
                del self.banks[position]
            self._restack()

    def _check(self, run: TaskRun, name: str) -> None:
        if name in self.runs:
            raise TaskExistsError(f"task: the name {name!r} is taken (by {self.runs[name].source}); give another")
        if self.runs:
            first = next(iter(self.runs.values()))
            diff = first.backbone.differences(run.backbone, str(first.source), str(run.source))
            if diff:
                raise PrunekitError(f"{run.source}: trained on another backbone than {first.source}: "
                                    f"{'; '.join(diff)}")
        if run.head_name != self._head_name or run.head["weight"].shape[1] != self._features:
            raise PrunekitError(f"{run.source}: its classifier {run.head_name} takes "
                                f"{run.head['weight'].shape[1]} features; the backbone's {self._head_name} takes "
                                f"{self._features}")
        for position, a in run.adapters.items():
            bank = self.banks.get(position)
            if bank is not None:
                if (bank.kind, bank.act_name, bank.layout, bank.dim) != (a.kind, a.act, a.layout, a.dim):
                    raise PrunekitError(
                        f"{run.source}: its adapter at {position} is {a.kind}, {a.act}, {a.layout}, width {a.dim}; "
                        f"the tasks there have {bank.kind}, {bank.act_name}, {bank.layout}, width {bank.dim}")
                continue
            try:
                sub = self.backbone.get_submodule(position)
            except AttributeError:
                raise PrunekitError(f"{run.source}: has an adapter at {position}, which the backbone lacks") from None
            if isinstance(sub, TaskAdapterLayer):  # pragma: no cover - banks and layers change together
                raise PrunekitError(f"{position}: wrapped without a bank")

    def _wrap(self, position: str, a) -> None:
        bank = AdapterBank(a.kind, a.act, a.layout, a.dim)
        set_submodule(self.backbone, position, TaskAdapterLayer(self.backbone.get_submodule(position), bank,
                                                                self.router))
        self.banks[position] = bank

    def _restack(self) -> None:
        runs = list(self.runs.values())
        device = self._device()
        for position, bank in self.banks.items():
            bank.set([r.adapters.get(position) for r in runs])
            bank.to(device)

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device


class _OneTask(nn.Module):
    def __init__(self, model: MultiTaskModel, name: str):
        super().__init__()
        self.model, self.name = model, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, tasks=self.name)


def default_name(source: Path) -> str:
    """A run's task name: its directory's name; for a trained file, its run directory's (RUN/adapters/cycle_K
    .safetensors) or else its stem."""
    if source.is_dir():
        return source.name
    return source.parent.parent.name if source.parent.name == "adapters" else source.stem


def load_tasks(runs: Sequence[str | Path] | dict[str, str | Path], *, backbone: str | Path | None = None,
               device: str | torch.device = "cpu") -> MultiTaskModel:
    """One backbone in memory and the adapters and head of every run, attached by name.

    Args:
        runs: run directories or trained files (named after the folder / file), or ``{name: run}``.
        backbone: the backbone weights file, when it is not where the runs' ``model.checkpoint`` says.
        device: where the model goes.

    Raises:
        PrunekitError: a run is not adapters + a head, two runs' backbones differ (both named), two names clash.
    """
    named = list(runs.items()) if isinstance(runs, dict) else [(None, r) for r in runs]
    if not named:
        raise PrunekitError("runs: give at least one run directory or trained file")
    read = [(name, read_task(r, backbone=backbone)) for name, r in named]
    names = [name or default_name(t.source) for name, t in read]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PrunekitError(f"runs: two runs are named {clash[0]!r}; name them: {{'a': RUN, 'b': RUN}} "
                            "(--task NAME=RUN)")
    first = read[0][1]
    for (_, other) in read[1:]:  # every backbone compared before anything is built
        diff = first.backbone.differences(other.backbone, str(first.source), str(other.source))
        if diff:
            raise PrunekitError(f"{other.source}: trained on another backbone than {first.source}: {'; '.join(diff)}")
    net = build_backbone(first.recipe, first.num_classes)
    model = MultiTaskModel(net.to(device), first, names[0])
    for name, (_, run) in zip(names[1:], read[1:]):
        model.add_task(run, name=name)
    return model.eval()
