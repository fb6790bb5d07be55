"""Uniformly pruned models reload with their own library in a process where prunekit cannot be imported:
transformers' ``from_pretrained`` (BERT-style encoder, LLaMA with grouped-query attention, HF ViT) and timm's
``create_model(name, **pk.architecture_kwargs(model))`` (ViT, DeiT, ConvNeXt, Swin); a model they cannot describe is
refused with the reason."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import prunekit as pk

sys.path.insert(0, str(Path(__file__).parent))
import any_models  # noqa: E402
from test_uniform import heads_first  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

NO_PRUNEKIT = textwrap.dedent("""
    import sys

    class _NoPrunekit:
        def find_spec(self, name, path=None, target=None):
            if name == "prunekit" or name.startswith("prunekit."):
                raise ImportError("prunekit is not installed here")

    sys.meta_path.insert(0, _NoPrunekit())
    try:
        import prunekit  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("prunekit was importable")
    import torch
    torch.set_num_threads(1)
""")


def run_without_prunekit(code: str, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", NO_PRUNEKIT + textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


HF_CASES = {  # name -> prune() arguments: encoders keep their heads (their configs derive the head size)
    "bert": dict(heads=False),
    "llama_gqa": dict(heads=True, scorer=heads_first),
    "hf_vit": dict(heads=False),
}


@pytest.mark.parametrize("name", list(HF_CASES))
def test_transformers_from_pretrained_without_prunekit(name, tmp_path):
    model, x = any_models.build(name)
    model.eval()
    pk.prune(model, x, ratio=0.3, uniform=True, **HF_CASES[name])
    config = model.config
    if name == "llama_gqa":  # fewer key/value heads, each with its query heads
        assert config.num_key_value_heads == 1 and config.num_attention_heads == 2
    assert config.intermediate_size < 128
    pk.check_native(model)
    model.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        out = model(**x)
    logits = out.logits
    save_file({k: v for k, v in x.items()}, str(tmp_path / "inputs.safetensors"))
    torch.save(logits, tmp_path / "expected.pt")
    run_without_prunekit(f"""
        import transformers
        from safetensors.torch import load_file
        model = getattr(transformers, {type(model).__name__!r}).from_pretrained("hf").eval()
        auto = transformers.AutoConfig.from_pretrained("hf")
        assert auto.intermediate_size == {config.intermediate_size}, auto.intermediate_size
        x = load_file("inputs.safetensors")
        with torch.no_grad():
            got = model(**x).logits
        expected = torch.load("expected.pt")
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    """, tmp_path)


TIMM_CASES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4), 32, dict(scorer=heads_first, ratio=0.5)),
    "deit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=4), 32, dict(ratio=0.3)),
    "convnext": ("convnext_atto", {}, 64, dict(ratio=0.3)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4), 64, dict(ratio=0.3)),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_create_model_with_architecture_kwargs_without_prunekit(case, tmp_path):
    name, build, size, how = TIMM_CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **build).eval()
    x = torch.randn(2, 3, size, size)
    pk.prune(model, x[:1], uniform=True, **how)
    if case == "vit":
        assert model.blocks[0].attn.num_heads == 2 and model.patch_embed.proj.out_channels == 128
    pk.save_pruned(model, tmp_path / "m")
    native = json.loads((tmp_path / "m" / "prunekit.json").read_text())["native"]
    assert native == {"library": "timm", "name": name, "kwargs": pk.architecture_kwargs(model)}
    save_file({"x": x}, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        torch.save(model(x), tmp_path / "expected.pt")
    run_without_prunekit("""
        import json
        import timm
        from safetensors.torch import load_file
        native = json.load(open("m/prunekit.json"))["native"]
        model = timm.create_model(native["name"], **native["kwargs"]).eval()
        model.load_state_dict(load_file("m/model.safetensors"), strict=True)
        with torch.no_grad():
            got = model(load_file("inputs.safetensors")["x"])
        torch.testing.assert_close(got, torch.load("expected.pt"), rtol=0, atol=1e-6)
    """, tmp_path)


def test_models_their_library_cannot_describe_are_refused_with_the_reason(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10).eval()
    pk.prune(vit, torch.randn(1, 3, 32, 32), ratio=0.3)  # free: every block its own width
    with pytest.raises(pk.NotNativeError, match=r"MLP widths differ between blocks .* prune with uniform=True"):
        pk.architecture_kwargs(vit)
    pk.save_pruned(vit, tmp_path / "vit")
    assert "MLP widths differ" in json.loads((tmp_path / "vit" / "prunekit.json").read_text())["native"]["problem"]

    llama, x = any_models.build("llama_gqa")
    pk.prune(llama.eval(), x, ratio=0.3)
    with pytest.raises(pk.NotNativeError, match=r"repeated layers have different widths .* prune with uniform=True"):
        pk.check_native(llama)

    bert, x = any_models.build("bert")
    pk.prune(bert.eval(), x, ratio=0.3, uniform=True, scorer=heads_first)
    assert bert.bert.encoder.layer[0].attention.self.num_attention_heads < 4
    with pytest.raises(pk.NotNativeError, match=r"BertConfig derives the head size as hidden_size / "
                                                r"num_attention_heads .* prune with heads=False"):
        pk.check_native(bert)

    resnet = timm.create_model("resnet18", num_classes=10).eval()
    pk.prune(resnet, torch.randn(1, 3, 32, 32), ratio=0.3, uniform=True)
    with pytest.raises(pk.NotNativeError, match="ResNet builds its widths by rules .* prunekit.load_pruned"):
        pk.architecture_kwargs(resnet)


def test_unpruned_models_round_trip_their_kwargs():
    """The kwargs of an unpruned model rebuild it exactly (the builders read what the constructor wrote)."""
    for name, kw in [("vit_tiny_patch16_224", dict(img_size=32, patch_size=4)), ("convnext_atto", {}),
                     ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4))]:
        model = timm.create_model(name, num_classes=7, **kw)
        kwargs = pk.architecture_kwargs(model)
        rebuilt = timm.create_model(name, **kwargs)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
            {k: v.shape for k, v in model.state_dict().items()}
