"""torch-pruning's op counter, as hooks on the model's own modules: :class:`OpCounter`.

``tp.utils.count_ops_and_params`` deep-copies the model (its hooks and ``__flops__`` counters live on the modules it
counts) and runs a forward of its own. A prune needs the MACs before and after slicing, so that was two copies and a
forward more than the prune itself, on a model the prune traces anyway. :class:`OpCounter` applies the same per-layer
formulas (``tp.utils.op_counter.MODULES_MAPPING``: the supported layer types and what each counts) to whatever
forwards run while it is active, through a proxy that holds each layer's counter, so the model gains no attribute
and keeps no hook afterwards. Entered around torch-pruning's trace, it counts the trace's forward::

    with OpCounter(model) as ops:
        traced = trace(model, x)           # one forward: the dependency graph and the MACs
    ops.macs, ops.layer_macs, ops.output_shapes

The totals are torch-pruning's: the sum over supported layers (a supported layer counts itself, not its children),
divided by the batch size the model was called with (its first positional input's length, 1 without one).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..core.outputs import output_tensors
from ..core.tpcompat import extra_root_types

__all__ = ["OpCounter"]


class _Counted:
    """A layer as torch-pruning's hook sees it: the layer's attributes, plus its own ``__flops__``."""

    def __init__(self, module: nn.Module):
        self.__dict__["_module"] = module
        self.__dict__["__flops__"] = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_module"], name)


class OpCounter:
    """Counts the MACs of the forwards of ``model`` run inside ``with OpCounter(model) as ops:``.

    After the block: ``forwards`` (calls of ``model`` itself), ``macs`` (per sample, torch-pruning's total),
    ``layer_macs`` (every supported module's count) and ``output_shapes`` (of the last call's tensors).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.forwards = 0
        self.batch = 0
        self.output_shapes: list[tuple[int, ...]] = []
        self._counted: dict[nn.Module, _Counted] = {}
        self._handles: list = []

    def __enter__(self) -> "OpCounter":
        from torch_pruning.utils import op_counter

        mapping = {**op_counter.MODULES_MAPPING, **op_counter.CUSTOM_MODULES_MAPPING}
        for cls in extra_root_types(self.model):  # transformers' Conv1D computes what a Linear does
            mapping.setdefault(cls, op_counter.MODULES_MAPPING[nn.Linear])
        for m in self.model.modules():
            fn = mapping.get(type(m))
            if fn is None or m in self._counted:
                continue
            counted = self._counted[m] = _Counted(m)
            self._handles.append(m.register_forward_hook(
                lambda _m, inputs, output, fn=fn, c=counted: fn(c, inputs, output)))
        self._handles.append(self.model.register_forward_hook(self._on_model))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_model(self, _model: nn.Module, inputs: tuple, output: Any) -> None:
        self.forwards += 1
        self.batch += len(inputs[0]) if inputs and hasattr(inputs[0], "__len__") else 1
        self.output_shapes = [tuple(t.shape) for t in output_tensors(output)]

    @property
    def layer_macs(self) -> dict[nn.Module, float]:
        """MACs of every supported module, per sample."""
        per = max(1, self.batch)
        return {m: c.__dict__["__flops__"] / per for m, c in self._counted.items()}

    @property
    def macs(self) -> float:
        """torch-pruning's total: a supported module counts itself and not its children."""
        counted = self._counted

        def total(m: nn.Module) -> float:
            if m in counted:
                return counted[m].__dict__["__flops__"]
            return sum(total(c) for c in m.children())

        return total(self.model) / max(1, self.batch)
