import copy

import pytest
import torch
from torch import nn

from prunekit import AdapterConfig, NoMatchingModuleError, find_adapters, inject_adapters
from prunekit.adapters.layers import Adapter, ParallelAdapterLayer, SeriesAdapterLayer, hidden_size

from conftest import tiny_swin, tiny_vit


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
@pytest.mark.parametrize("kind", ["series", "parallel"])
def test_injected_model_starts_at_backbone_output(make, kind, images):
    model = make().eval()
    before = model(images)
    names = inject_adapters(model, AdapterConfig(sigma=4, kind=kind))
    assert names and all(n.endswith((".attn", ".mlp")) for n in names)
    assert len(find_adapters(model)) == len(names)
    torch.testing.assert_close(model(images), before, rtol=0, atol=0)


def test_adapter_changes_output_once_up_is_trained(vit, images):
    vit.eval()
    before = vit(images)
    inject_adapters(vit, sigma=4)
    for a in find_adapters(vit).values():
        nn.init.normal_(a.up.weight)
    assert not torch.allclose(vit(images), before)


def test_wraps_attention_and_mlp_of_every_block(vit):
    names = inject_adapters(vit, AdapterConfig(sigma=8))
    assert names == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert isinstance(vit.blocks[0].attn, SeriesAdapterLayer)
    assert vit.blocks[0].attn.adapter.hidden == 4  # 32 / 8


def test_parallel_adapter_is_a_branch_on_the_sublayer_input(images):
    layer = nn.Linear(6, 6)
    adapter = Adapter(6, 2, residual=False, scale=0.5)
    nn.init.normal_(adapter.up.weight)
    wrapped = ParallelAdapterLayer(layer, adapter)
    x = torch.randn(4, 6)
    expected = layer(x) + 0.5 * adapter.up(adapter.act(adapter.down(x)))
    torch.testing.assert_close(wrapped(x), expected)


def test_series_adapter_follows_eq_1():
    adapter = Adapter(5, 3)
    nn.init.normal_(adapter.up.weight)
    h = torch.randn(2, 5)
    expected = adapter.up(nn.functional.gelu(adapter.down(h))) + h
    torch.testing.assert_close(adapter(h), expected)


def test_backbone_checkpoint_loads_into_injected_model(images):
    source = tiny_vit().eval()
    for p in source.parameters():
        nn.init.normal_(p, std=0.1)
    target = tiny_vit().eval()
    inject_adapters(target, sigma=8)
    result = target.load_state_dict(source.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".adapter." in k for k in result.missing_keys)
    torch.testing.assert_close(target(images), source(images))


def test_extra_arguments_and_attributes_pass_through(swin, images):
    inject_adapters(swin, sigma=4)
    attn = swin.layers[0].blocks[0].attn
    assert isinstance(attn, SeriesAdapterLayer)
    assert attn.num_heads == attn.base_layer.num_heads  # attribute forwarded to the wrapped WindowAttention
    assert swin(images).shape == (3, 5)  # Swin calls attn(x, mask=...) through the wrapper


def test_no_match_is_a_named_error_and_leaves_model_untouched(vit):
    before = copy.deepcopy(vit.state_dict())
    with pytest.raises(NoMatchingModuleError, match=r"blocks\.\*\.atn.*did you mean") as e:
        inject_adapters(vit, AdapterConfig(sigma=8, targets=["blocks.*.atn"]))
    assert isinstance(e.value, ValueError)
    assert not find_adapters(vit)
    assert vit.state_dict().keys() == before.keys()


def test_custom_targets_on_any_model():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 8)))
    names = inject_adapters(model, AdapterConfig(hidden=3, targets=["0", "2.1"]))
    assert names == ["0", "2.1"]
    assert model[0].adapter.hidden == 3 and model[2][1].adapter.dim == 8


def test_inject_twice_is_refused(vit):
    inject_adapters(vit, sigma=8)
    with pytest.raises(Exception, match="already carry an adapter"):
        inject_adapters(vit, sigma=8)


@pytest.mark.parametrize("dim,sigma,hidden,expected", [(96, 32, None, 3), (768, 32, None, 24), (96, 4096, None, 1),
                                                       (100, 8, None, 13), (384, None, 47, 47)])
def test_hidden_size(dim, sigma, hidden, expected):
    assert hidden_size(dim, sigma, hidden) == expected


@pytest.mark.parametrize("kwargs,match", [({"sigma": 0}, "sigma"), ({"sigma": None}, "neither"),
                                          ({"kind": "serial"}, "kind"), ({"hidden": 0}, "hidden"),
                                          ({"act_layer": "gleu"}, "did you mean 'gelu'")])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kwargs)


def test_deepcopy_and_state_dict_round_trip(vit, images):
    inject_adapters(vit, sigma=8)
    for a in find_adapters(vit).values():
        nn.init.normal_(a.up.weight)
    clone = copy.deepcopy(vit).eval()
    vit.eval()
    torch.testing.assert_close(clone(images), vit(images))
    fresh = tiny_vit().eval()
    inject_adapters(fresh, sigma=8)
    fresh.load_state_dict(vit.state_dict())  # strict: same structure, same keys
    torch.testing.assert_close(fresh(images), vit(images))
