"""Adapters on channels-first (NCHW) sub-layers: 1x1-conv adapters, layout tracing, refusals (issue #12 item 7)."""
import copy

import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from prunekit import AdapterConfig, adapter_groups, find_adapters, inject_adapters, remove_empty_adapters
from prunekit.adapters.layers import AdapterLayoutError, Conv1x1
from prunekit.methods.phm import PHMLinear

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def _atto():
    torch.manual_seed(0)
    # layer scale 1 instead of timm's 1e-6 init, so what an adapter inside a block does shows in the logits
    return timm.create_model("convnext_atto", pretrained=False, num_classes=5, ls_init_value=1.0).eval()


@pytest.fixture
def atto(_atto):
    return copy.deepcopy(_atto)


def convnext_linear_mlp():
    """ConvNeXt with conv_mlp=False: blocks run a Linear MLP between two permutes and output NCHW."""
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False, num_classes=5, conv_mlp=False).eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def randomize_up(model: nn.Module) -> None:
    for a in find_adapters(model).values():
        nn.init.normal_(a.up.weight)
        nn.init.normal_(a.up.bias)


@pytest.mark.parametrize("traced", [False, True], ids=["by-type", "traced"])
def test_convnext_blocks_get_conv_adapters_found_pruned_and_removed(atto, traced):
    bare = copy.deepcopy(atto)
    expected = bare(X)
    names = inject_adapters(atto, AdapterConfig(sigma=8, targets=["stages.*.blocks.*"]),
                            example_inputs=X if traced else None)
    adapters = find_adapters(atto)
    assert len(names) == len(adapters) == 12
    assert all(a.layout == "channels_first" and isinstance(a.down, Conv1x1) and a.down.kernel_size == (1, 1)
               for a in adapters.values())
    assert adapters["stages.3.blocks.0.adapter"].dim == 320 and adapters["stages.3.blocks.0.adapter"].hidden == 40
    torch.testing.assert_close(atto(X), expected, rtol=0, atol=0)  # zero-initialised up: the backbone's output
    randomize_up(atto)
    assert not torch.allclose(atto(X), expected)
    groups = adapter_groups(atto, X)
    assert len(groups) == 12
    for g in groups:
        roles = [(m.role, type(m.module).__name__) for m in g.members]
        assert roles == [("producer", "Conv1x1"), ("consumer", "Conv1x1")]
        assert g.fan == g.producers[0].module.in_channels and g.width == g.fan // 8
    for g in groups[::2]:
        g.prune(range(1, g.width))  # partially pruned adapters still run
    assert atto(X).shape == (2, 5)
    for g in adapter_groups(atto, X):
        g.prune(range(g.width))
    assert {a.hidden for a in find_adapters(atto).values()} == {0}
    assert atto(X).shape == (2, 5)  # zero-width conv adapters still run (x + up.bias) until removed
    assert len(remove_empty_adapters(atto)) == 12 and not find_adapters(atto)
    torch.testing.assert_close(atto(X), expected, rtol=0, atol=0)
    assert atto.state_dict().keys() == bare.state_dict().keys()


def test_conv_dw_outputs_and_parallel_conv_adapters(atto):
    bare = atto(X)
    inject_adapters(atto, AdapterConfig(hidden=3, kind="parallel", targets=["stages.*.blocks.*.conv_dw"]),
                    example_inputs=X)
    adapters = find_adapters(atto)
    assert len(adapters) == 12 and {a.layout for a in adapters.values()} == {"channels_first"}
    torch.testing.assert_close(atto(X), bare, rtol=0, atol=0)
    randomize_up(atto)
    y = atto(X)
    assert y.shape == (2, 5) and not torch.allclose(y, bare)
    y.sum().backward()
    assert all(a.down.weight.grad is not None for a in adapters.values())


def test_backbone_checkpoint_loads_into_conv_injected_model(atto):
    source = copy.deepcopy(atto)
    for p in source.parameters():
        nn.init.normal_(p, std=0.05)
    inject_adapters(atto, AdapterConfig(sigma=8, targets=["stages.*.blocks.*"]))
    result = atto.load_state_dict(source.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".adapter." in k for k in result.missing_keys)
    torch.testing.assert_close(atto(X), source(X))


def test_linear_mlp_convnext_needs_tracing_and_then_gets_conv_adapters():
    model = convnext_linear_mlp()
    before = state(model)
    config = AdapterConfig(sigma=8, targets=["stages.*.blocks.*"])
    with pytest.raises(AdapterLayoutError, match=r"'stages\.0\.blocks\.0' \(ConvNeXtBlock\) has layers "
                                                 r"\['Conv2d', 'Linear'\].*example_inputs="):
        inject_adapters(model, config)
    assert not find_adapters(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    inject_adapters(model, config, example_inputs=X)  # last layer is a Linear, but the block outputs NCHW
    assert {a.layout for a in find_adapters(model).values()} == {"channels_first"}
    randomize_up(model)
    assert model(X).shape == (2, 5)
    # the MLP inside the block outputs channels last (B, H, W, C): Linear adapters, by type or traced
    other = convnext_linear_mlp()
    inject_adapters(other, AdapterConfig(sigma=8, targets=["stages.*.blocks.*.mlp"]))
    assert {a.layout for a in find_adapters(other).values()} == {"channels_last"}
    randomize_up(other)
    assert other(X).shape == (2, 5)


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x), x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = TupleOut()
        self.seq = nn.Conv1d(4, 4, 1)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        y, _ = self.pair(x)
        return self.seq(y.flatten(2))


@pytest.mark.parametrize("target,kind,traced,match", [
    ("pair", "series", True, r"'pair' \(TupleOut\) returns a tuple"),
    ("seq", "series", True, r"'seq' \(Conv1d\) outputs shape \(2, 4, 64\).*channels first \(B, 4, H, W\)"),
    ("seq", "series", False, r"'seq' \(Conv1d\) has layers \['Conv1d'\]"),
    ("unused", "series", True, r"'unused' \(Linear\) was not called"),
])
def test_unadaptable_layouts_are_refused_before_anything_changes(target, kind, traced, match):
    model = Net()
    before = state(model)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(AdapterLayoutError, match=match):
        inject_adapters(model, AdapterConfig(hidden=2, kind=kind, targets=["pair.conv", target]),
                        example_inputs=x if traced else None)
    assert not find_adapters(model) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_parallel_adapter_on_a_width_changing_downsample_is_refused(atto):
    with pytest.raises(AdapterLayoutError, match=r"'stages\.1\.downsample' .*takes an input of shape \(2, 40, 16, "
                                                 r"16\); an adapter of width 80"):
        inject_adapters(atto, AdapterConfig(hidden=2, kind="parallel", targets=["stages.1.downsample"]),
                        example_inputs=X)
    assert not find_adapters(atto)


def test_patch_embedding_that_flattens_is_refused_by_type():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(AdapterLayoutError, match=r"'patch_embed' \(PatchEmbed\) ends in a Conv2d but flattens"):
        inject_adapters(vit, AdapterConfig(hidden=2, targets=["patch_embed"]))
    inject_adapters(vit, AdapterConfig(hidden=2, targets=["patch_embed"]), example_inputs=torch.randn(1, 3, 16, 16))
    assert find_adapters(vit)["patch_embed.adapter"].layout == "channels_last"


def test_phm_layers_are_refused_on_channels_first_targets(atto):
    with pytest.raises(AdapterLayoutError, match="linear_layer="):
        inject_adapters(atto, AdapterConfig(hidden=4, targets=["stages.0.blocks.0"]),
                        linear_layer=lambda i, o, bias=True: PHMLinear(i, o, bias, n=4))
    assert not find_adapters(atto)


def test_square_output_tie_is_settled_by_type():
    model = nn.Sequential(nn.Conv2d(3, 8, 1))
    inject_adapters(model, AdapterConfig(hidden=2, targets=["0"]), example_inputs=torch.randn(1, 3, 5, 8))
    assert find_adapters(model)["0.adapter"].layout == "channels_first"  # (1, 8, 5, 8): both axes are 8 wide


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 6), n=st.integers(1, 6), seed=st.integers(0, 10_000), data=st.data())
def test_sliced_conv_adapter_equals_masked_conv_adapter(m, n, seed, data):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, m, 3, padding=1), nn.ReLU(), nn.Conv2d(m, m, 1)).eval()
    inject_adapters(model, AdapterConfig(hidden=n, targets=["0", "2"]))
    randomize_up(model)
    x = torch.randn(2, 3, 5, 5)
    groups = adapter_groups(model, x)
    assert len(groups) == 2
    drops = [sorted(data.draw(st.sets(st.integers(0, n - 1)))) for _ in groups]
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for a, drop in zip(find_adapters(masked).values(), drops):
            a.up.weight[:, drop] = 0
    for g, drop in zip(groups, drops):
        g.prune(drop)
    torch.testing.assert_close(model(x), masked(x), rtol=1e-5, atol=1e-6)
