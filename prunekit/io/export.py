"""Export any model, pruned or not, to TorchScript, ONNX or ``torch.export``, with a parity check against PyTorch.

::

    plan = pk.prune(model, x, ratio=0.3)
    info = pk.export(model, x, "model.onnx", format="onnx")      # or "torchscript", "torch_export"
    info["max_abs_diff"]                                          # exported vs PyTorch on a batch of another size

``example_inputs`` is what the model takes: a tensor (``model(x)``), a tuple of them (``model(*x)``) or a dict
(``model(**x)``: a transformers model's ``input_ids`` / ``attention_mask`` / ``pixel_values``). Dim 0 of every input
is the batch and stays dynamic in every format: the parity check feeds a batch two larger than the example (float
inputs drawn again, integer ones such as token ids repeated row by row) and compares every tensor the model returns
(a ``ModelOutput``'s fields, a dict's values, in order).

- ``torchscript``: ``torch.jit.trace`` (timm models do not script; dict inputs as keyword inputs, ``strict=False``
  for dict outputs); nothing extra needed; load with ``torch.jit.load``.
- ``onnx``: torch's exporter (``torch.onnx.export(dynamo=True)``; the TorchScript-based exporter is the fallback);
  needs ``onnx`` / ``onnxscript``, and the parity check runs the file with ``onnxruntime`` (``pip install
  'prunekit[export]'`` installs all three).
- ``torch_export``: ``torch.export.export`` to an ``ExportedProgram``, saved with ``torch.export.save`` (``.pt2``);
  load with ``torch.export.load(path).module()``.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..core.outputs import output_tensors
from ..registry import PrunekitError
from .files import atomic_write_bytes

__all__ = ["FORMATS", "ExportError", "export", "export_model"]

FORMATS = ("torchscript", "onnx", "torch_export")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "torch_export": ".pt2"}


class ExportError(PrunekitError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


def _missing_onnx_packages() -> list[str]:
    return [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]


def _tensors_of(x: Any) -> list[torch.Tensor]:
    return list(x.values()) if isinstance(x, dict) else [x] if isinstance(x, torch.Tensor) else list(x)


def _check_inputs(x: Any) -> None:
    ok = isinstance(x, torch.Tensor) or (isinstance(x, (tuple, list, dict)) and x and all(
        isinstance(v, torch.Tensor) for v in _tensors_of(x)))
    if not ok:
        raise ExportError(f"example_inputs: expected a tensor, a tuple of tensors or a dict of tensors, got "
                          f"{type(x).__name__}")
    sizes = {int(v.shape[0]) for v in _tensors_of(x) if v.dim()}
    if len(sizes) != 1 or any(v.dim() == 0 for v in _tensors_of(x)):
        raise ExportError(f"example_inputs: every input needs the same batch size in dim 0, got shapes "
                          f"{[tuple(v.shape) for v in _tensors_of(x)]}")


def _resize_batch(x: Any, n: int, gen: torch.Generator) -> Any:
    """``x`` with a batch of ``n``: floats drawn again, integers / booleans repeated row by row."""
    def one(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return torch.randn((n, *t.shape[1:]), generator=gen, dtype=t.dtype).to(t.device)
        return t[torch.arange(n) % t.shape[0]]

    if isinstance(x, torch.Tensor):
        return one(x)
    if isinstance(x, dict):
        return {k: one(v) for k, v in x.items()}
    return type(x)(one(v) for v in x)


def _call(fn: Callable, x: Any) -> Any:
    args, kwargs = _args(x)
    return fn(*args, **kwargs)


def _fresh_temp(path: Path) -> Path:
    """A new, empty file beside ``path`` that nobody else owns (removed by the caller); it keeps ``path``'s suffix,
    which ``torch.export.save`` insists on."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def _write_through_temp(path: Path, write: Callable[[Path], None]) -> None:
    tmp = _fresh_temp(path)
    try:
        write(tmp)
        atomic_write_bytes(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def _export_torchscript(model: nn.Module, example: Any, path: Path) -> Callable:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(example, dict):
            traced = torch.jit.trace(model, example_kwarg_inputs=example, check_trace=False, strict=False)
        else:
            traced = torch.jit.trace(model, example if isinstance(example, torch.Tensor) else tuple(example),
                                     check_trace=False, strict=False)
    _write_through_temp(path, lambda tmp: torch.jit.save(traced, str(tmp)))
    return torch.jit.load(str(path), map_location=_tensors_of(example)[0].device)


def _dynamic_shapes(example: Any) -> Any:
    batch = torch.export.Dim("batch")
    if isinstance(example, torch.Tensor):
        return ({0: batch},)
    if isinstance(example, dict):
        return {k: {0: batch} for k in example}
    return tuple({0: batch} for _ in example)


def _args(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, dict):
        return (), dict(example)
    return ((example,) if isinstance(example, torch.Tensor) else tuple(example)), {}


def _export_program(model: nn.Module, example: Any, path: Path) -> Callable:
    args, kwargs = _args(example)
    try:
        program = torch.export.export(model, args, kwargs, dynamic_shapes=_dynamic_shapes(example))
    except Exception as e:  # noqa: BLE001 - the exporter's own message says which op
        raise ExportError(f"--format torch_export: torch.export could not capture the model with a dynamic batch "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    _write_through_temp(path, lambda tmp: torch.export.save(program, str(tmp)))
    return torch.export.load(str(path)).module()


def _export_onnx(model: nn.Module, example: Any, path: Path, opset: int | None) -> tuple[Callable, str]:
    missing = _missing_onnx_packages()
    if missing:
        raise ExportError(f"--format onnx: needs the packages {', '.join(missing)}; pip install 'prunekit[export]'")
    import onnxruntime as ort

    images = isinstance(example, torch.Tensor) and example.dim() == 4
    names = list(example) if isinstance(example, dict) else ["images"] if images else \
        [f"input_{i}" for i in range(len(_tensors_of(example)))]
    kwargs: dict[str, Any] = {"input_names": names}
    if images:
        kwargs["output_names"] = ["logits"]
    if opset is not None:
        kwargs["opset_version"] = opset
    args, kw = _args(example)
    exporter = ["dynamo"]

    def write(tmp: Path) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, args, str(tmp), kwargs=kw, dynamo=True, external_data=False,
                                  dynamic_shapes=_dynamic_shapes(example), **kwargs)
        except Exception as first:  # noqa: BLE001 - fall back to the TorchScript-based exporter; both on failure
            exporter[0] = "torchscript"
            axes = {n: {0: "batch"} for n in names}
            if images:
                axes["logits"] = {0: "batch"}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, args if not kw else (kw,), str(tmp), dynamo=False, dynamic_axes=axes,
                                      **kwargs)
            except Exception as second:  # noqa: BLE001
                raise ExportError(f"--format onnx: torch's exporter failed ({type(first).__name__}: "
                                  f"{str(first)[:200]}); the TorchScript-based one too ({type(second).__name__}: "
                                  f"{str(second)[:200]})") from None

    _write_through_temp(path, write)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]

    def run(*a, **k):
        given = k or dict(zip(names, a))
        feed = {n: given[n].detach().cpu().numpy() for n in wanted}
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    return run, exporter[0]


def export(model: nn.Module, example_inputs: Any, path: str | Path, *,
           format: Literal["torchscript", "onnx", "torch_export"] = "torchscript", atol: float = 1e-4,
           opset: int | None = None, replace: bool = False) -> dict[str, Any]:
    """Write ``model`` (put in eval mode) to ``path`` and check it against PyTorch on a batch of another size.

    Args:
        model: any model, pruned or not; its parameters are not changed.
        example_inputs: what the model takes: a tensor, a tuple of tensors, or a dict of them (``model(**x)``); dim
            0 is the batch (module docstring).
        path: file to write (atomically, through a fresh temporary file beside it).
        format: ``'torchscript'``, ``'onnx'`` or ``'torch_export'`` (an ``ExportedProgram``, ``.pt2``).
        atol: largest allowed absolute difference between the exported model's outputs and PyTorch's.
        opset: ONNX opset version (default: the exporter's).
        replace: replace an existing file at ``path``; without it an existing file is refused, untouched.

    Returns:
        ``{'path', 'format', 'exporter', 'bytes', 'max_abs_diff', 'parity_batch'}``.

    Raises:
        ExportError: unknown format, bad inputs, missing ONNX packages, an exporter failure, or outputs further
            apart than ``atol`` (the file is then written but should not be trusted).
    """
    if format not in FORMATS:
        raise ExportError(f"--format: unknown {format!r}; allowed: {', '.join(FORMATS)}")
    _check_inputs(example_inputs)
    path = Path(path)
    if path.exists() and not replace:
        raise ExportError(f"{path}: already exists; nothing was written. Pass replace=True to replace it, or "
                          "choose another path")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: the folder {path.parent} does not exist")
    gen = torch.Generator().manual_seed(0)
    batch = int(_tensors_of(example_inputs)[0].shape[0])
    if batch < 2:  # torch.export specialises a batch of 1: trace on two rows
        example_inputs = _resize_batch(example_inputs, 2, gen)
        batch = 2
    model.eval()
    with torch.no_grad():
        if format == "torchscript":
            run, exporter = _export_torchscript(model, example_inputs, path), "torch.jit.trace"
        elif format == "torch_export":
            run, exporter = _export_program(model, example_inputs, path), "torch.export"
        else:
            run, exporter = _export_onnx(model, example_inputs, path, opset)
        x = _resize_batch(example_inputs, batch + 2, gen)
        expected = [t.float().cpu() for t in output_tensors(_call(model, x))]
        got = [t.float().cpu() for t in output_tensors(_call(run, x))]
    if [t.shape for t in got] != [t.shape for t in expected]:
        raise ExportError(f"{path}: the exported model returns shapes {[tuple(t.shape) for t in got]} for a batch of "
                          f"{batch + 2}, PyTorch {[tuple(t.shape) for t in expected]}")
    diff = max((float((a - b).abs().max()) for a, b in zip(got, expected) if a.numel()), default=0.0)
    if not diff <= atol:
        raise ExportError(f"{path}: exported outputs differ from PyTorch's by {diff:.3g} (> atol {atol:g}); the file "
                          "is written but should not be trusted")
    return {"path": str(path), "format": format, "exporter": exporter, "bytes": path.stat().st_size,
            "max_abs_diff": diff, "parity_batch": batch + 2}


export_model = export  # the name the CLI and earlier code use
