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


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=[onnx_ready, pytest.mark.integration])])
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
    with pytest.raises(ExportError, match="allowed: torchscript, onnx, torch_export"):
        export_model(model, images[:1], tmp_path / "m.x", format="tflite")


def test_torch_export_writes_an_exported_program_with_a_dynamic_batch(tmp_path, images):
    model = adapted_vit()
    path = tmp_path / "model.pt2"
    info = export_model(model, images[:2], path, format="torch_export")
    assert info["exporter"] == "torch.export" and info["max_abs_diff"] <= 1e-4 and info["parity_batch"] == 4
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images[:5]), model(images[:5]), rtol=1e-5, atol=1e-5)


FORMATS = ["torchscript", "torch_export", pytest.param("onnx", marks=onnx_ready)]


@pytest.mark.integration  # three formats x two models: the fast lane keeps the adapted-ViT cases above
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_any_pruned_model_including_dict_inputs(tmp_path, fmt):
    """pk.export takes what the model takes: a pruned CNN's tensor, a pruned transformers encoder's dict."""
    import sys
    from pathlib import Path

    import timm

    import prunekit as pk

    sys.path.insert(0, str(Path(__file__).parent))
    import any_models

    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pk.prune(cnn, x, ratio=0.3)
    info = pk.export(cnn, x, tmp_path / f"cnn.{fmt}", format=fmt)
    assert info["max_abs_diff"] <= 1e-4 and info["parity_batch"] == 4  # traced on 2 rows, checked on 4

    bert, tokens = any_models.build("bert")
    pk.prune(bert.eval(), tokens, ratio=0.3)
    info = pk.export(bert, tokens, tmp_path / f"bert.{fmt}", format=fmt)
    assert info["max_abs_diff"] <= 1e-4 and info["parity_batch"] == 4


def test_export_names_bad_inputs(tmp_path):
    model = adapted_vit()
    with pytest.raises(ExportError, match="expected a tensor, a tuple of tensors or a dict of tensors, got str"):
        export_model(model, "images", tmp_path / "m.pt")
    with pytest.raises(ExportError, match="the same batch size in dim 0"):
        export_model(model, (torch.zeros(2, 3), torch.zeros(3, 3)), tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())
