"""Export an adapted or pruned model to TorchScript or ONNX, with a parity check against PyTorch.

::

    model = prunekit.load("runs/quickstart")                 # backbone + the run's adapters, eval mode
    info = export_model(model, example, "qs.onnx", format="onnx")
    info["max_abs_diff"]                                     # exported vs PyTorch on a fresh random batch

TorchScript goes through ``torch.jit.trace`` (timm models do not script) and needs nothing extra. ONNX goes through
torch's exporter (``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension; the TorchScript-based exporter
is the fallback) and needs the ``onnx`` / ``onnxscript`` packages; the parity check runs the file with
``onnxruntime`` (``pip install 'prunekit[export]'`` installs all three). The batch dimension stays dynamic in both
formats: the parity check feeds a batch of a different size than the one traced.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..registry import PrunekitError
from .files import atomic_write_bytes

__all__ = ["FORMATS", "ExportError", "export_model"]

FORMATS = ("torchscript", "onnx")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportError(PrunekitError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


def _missing_onnx_packages() -> list[str]:
    return [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]


def _parity_input(example: torch.Tensor) -> torch.Tensor:
    """A batch of another size than ``example`` (so a frozen batch dimension is caught), same per-image shape."""
    n = example.shape[0] + 2
    gen = torch.Generator().manual_seed(0)
    return torch.randn((n, *example.shape[1:]), generator=gen, dtype=example.dtype).to(example.device)


def _fresh_temp(path: Path) -> Path:
    """A new, empty file beside ``path`` that nobody else owns (removed by the caller)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    tmp = _fresh_temp(path)
    try:
        torch.jit.save(traced, str(tmp))
        atomic_write_bytes(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    loaded = torch.jit.load(str(path), map_location=example.device)
    return lambda x: loaded(x)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> tuple[Any, str]:
    missing = _missing_onnx_packages()
    if missing:
        raise ExportError(f"--format onnx: needs the packages {', '.join(missing)}; pip install 'prunekit[export]'")
    import onnxruntime as ort

    tmp = _fresh_temp(path)
    kwargs: dict[str, Any] = {"input_names": ["images"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    exporter = "dynamo"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **kwargs)
    except Exception as first:  # noqa: BLE001 - fall back to the TorchScript-based exporter, report both on failure
        exporter = "torchscript"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(tmp), dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
        except Exception as second:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            raise ExportError(f"--format onnx: torch's exporter failed ({type(first).__name__}: {str(first)[:200]}); "
                              f"the TorchScript-based one too ({type(second).__name__}: {str(second)[:200]})"
                              ) from None
    try:
        atomic_write_bytes(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])), exporter


def export_model(model: nn.Module, example_inputs: torch.Tensor, path: str | Path, *,
                 format: Literal["torchscript", "onnx"] = "torchscript", atol: float = 1e-4,
                 opset: int | None = None, replace: bool = False) -> dict[str, Any]:
    """Write ``model`` (put in eval mode) to ``path`` and check it against PyTorch on a fresh random batch.

    Args:
        model: the model to export; its parameters are not changed.
        example_inputs: one batch of images ``(B, C, H, W)`` the model accepts.
        path: file to write (atomically, through a fresh temporary file beside it).
        format: ``'torchscript'`` or ``'onnx'``.
        atol: largest allowed absolute difference between the exported model's and PyTorch's outputs.
        opset: ONNX opset version (default: the exporter's).
        replace: replace an existing file at ``path``; without it an existing file is refused, untouched.

    Returns:
        ``{'path', 'format', 'exporter', 'bytes', 'max_abs_diff', 'parity_batch'}``.

    Raises:
        ExportError: unknown format, missing ONNX packages, an exporter failure, or outputs further apart than atol.
    """
    if format not in FORMATS:
        raise ExportError(f"--format: unknown {format!r}; allowed: {', '.join(FORMATS)}")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        raise ExportError(f"example_inputs: expected an image batch (B, C, H, W), got "
                          f"{getattr(example_inputs, 'shape', type(example_inputs).__name__)}")
    path = Path(path)
    if path.exists() and not replace:
        raise ExportError(f"{path}: already exists; nothing was written. Pass replace=True to replace it, or "
                          "choose another path")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: the folder {path.parent} does not exist")
    model.eval()
    with torch.no_grad():
        if format == "torchscript":
            run, exporter = _export_torchscript(model, example_inputs, path), "torch.jit.trace"
        else:
            run, exporter = _export_onnx(model, example_inputs, path, opset)
        x = _parity_input(example_inputs)
        expected = model(x).float().cpu()
        got = run(x).float().cpu()
    if got.shape != expected.shape:
        raise ExportError(f"{path}: the exported model returns shape {tuple(got.shape)} for a batch of {x.shape[0]}, "
                          f"PyTorch {tuple(expected.shape)}")
    diff = float((got - expected).abs().max()) if expected.numel() else 0.0
    if not diff <= atol:
        raise ExportError(f"{path}: exported outputs differ from PyTorch's by {diff:.3g} (> atol {atol:g}); the file "
                          "is written but should not be trusted")
    return {"path": str(path), "format": format, "exporter": exporter, "bytes": path.stat().st_size,
            "max_abs_diff": diff, "parity_batch": int(x.shape[0])}
