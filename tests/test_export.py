"""Export to TorchScript / ONNX: the file reproduces PyTorch's outputs on a batch of another size."""
import hashlib

import pytest
import torch

from prunekit import AdapterConfig, inject_adapters
from prunekit.io.export import ExportError, export_model

from conftest import tiny_vit

onnx_ready = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(p) is None for p in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs pip install 'prunekit[export]'")


def adapted_vit():
    model = tiny_vit()
    inject_adapters(model, AdapterConfig(sigma=4))
    for a in model.modules():  # non-zero up weights so the adapters change the output
        if hasattr(a, "up") and isinstance(a.up, torch.nn.Linear):
            torch.nn.init.normal_(a.up.weight, std=0.1)
    return model.eval()


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=onnx_ready)])
def test_export_matches_pytorch(tmp_path, images, fmt):
    model = adapted_vit()
    path = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    info = export_model(model, images[:2], path, format=fmt)
    assert path.is_file() and info["bytes"] == path.stat().st_size
    assert info["max_abs_diff"] <= 1e-4
    assert info["parity_batch"] == 4  # a batch size other than the traced one: the batch dimension is dynamic
    assert not [p.name for p in tmp_path.iterdir() if p.name != path.name]  # no temp file left


def test_export_refuses_an_existing_file_and_unknown_format(tmp_path, images):
    model = adapted_vit()
    path = tmp_path / "user.pt"
    path.write_bytes(b"the user's file")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ExportError, match="already exists"):
        export_model(model, images[:1], path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    info = export_model(model, images[:1], path, replace=True)
    assert info["max_abs_diff"] <= 1e-4
    with pytest.raises(ExportError, match="allowed: torchscript, onnx"):
        export_model(model, images[:1], tmp_path / "m.x", format="tflite")
