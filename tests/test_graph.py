import pytest
import timm
import torch
from torch import nn

from prunekit import AdapterConfig, adapter_groups, find_groups, inject_adapters
from prunekit.models.params import adapter_param_count, count_parameters, head_param_count, mark_trainable

from conftest import small_cnn, tiny_swin, tiny_vit

FULL_SIZE = {"swin_t": "swin_tiny_patch4_window7_224", "vit_b16": "vit_base_patch16_224"}


@pytest.fixture(scope="module", params=list(FULL_SIZE))
def full_model(request):
    model = timm.create_model(FULL_SIZE[request.param], pretrained=False, num_classes=345)
    inject_adapters(model, AdapterConfig(sigma=32))
    return request.param, model


def test_24_adapter_groups_in_full_size_models(full_model):
    name, model = full_model
    groups = adapter_groups(model, torch.randn(1, 3, 224, 224))
    assert len(groups) == 24
    for g in groups:
        assert [m.role for m in g.members] == ["producer", "consumer"]
        assert g.producers[0].name.endswith("adapter.down") and g.consumers[0].name.endswith("adapter.up")
        assert g.width == g.fan // 32
        assert isinstance(g.activation, nn.GELU)
    fans = sorted({g.fan for g in groups})
    assert fans == ([96, 192, 384, 768] if name == "swin_t" else [768])


# Closed forms measured on timm 1.0.31 (issue #2): sum over adapters of 2 n m, plus n + m with biases.
EXPECTED_ADAPTER_PARAMS = {"swin_t": (269_568, 278_676), "vit_b16": (884_736, 903_744)}


def test_adapter_parameter_counts_equal_closed_forms(full_model):
    name, model = full_model
    adapters = {n: p for n, p in model.named_parameters() if ".adapter." in n}
    weights = sum(p.numel() for n, p in adapters.items() if n.endswith("weight"))
    total = sum(p.numel() for p in adapters.values())
    assert (weights, total) == EXPECTED_ADAPTER_PARAMS[name]
    dims = [a.dim for a in (m for m in model.modules() if hasattr(m, "residual"))]
    assert adapter_param_count(dims, sigma=32, bias=False) == weights
    assert adapter_param_count(dims, sigma=32) == total


def test_head_parameter_count_and_trainable_split(full_model):
    name, model = full_model
    trainable = mark_trainable(model)
    head = model.get_classifier()
    assert sum(p.numel() for p in head.parameters()) == head_param_count(768, 345) == 265_305
    assert trainable == EXPECTED_ADAPTER_PARAMS[name][1] + 265_305
    assert count_parameters(model, trainable_only=True) == trainable


def test_mlp_groups_couple_fc1_out_with_fc2_in():
    model = tiny_vit(depth=3)
    groups = find_groups(model, torch.randn(1, 3, 16, 16))
    mlp = [g for g in groups if g.name.endswith("mlp.fc1")]
    assert [g.name for g in mlp] == [f"blocks.{i}.mlp.fc1" for i in range(3)]
    for i, g in enumerate(mlp):
        assert [(m.name, m.role) for m in g.members] == [(f"blocks.{i}.mlp.fc1", "producer"),
                                                         (f"blocks.{i}.mlp.fc2", "consumer")]
        assert (g.width, g.fan) == (128, 32)


def test_groups_restricted_to_modules_never_touch_the_rest():
    model = tiny_vit()
    inject_adapters(model, sigma=8)
    every = find_groups(model, torch.randn(1, 3, 16, 16))
    only_mlp = find_groups(model, torch.randn(1, 3, 16, 16), only=[b.mlp.base_layer for b in model.blocks])
    assert len(every) > len(only_mlp) == 2
    assert all(m.name.startswith(f"blocks.{i}.mlp.base_layer") for i, g in enumerate(only_mlp) for m in g.members)
    # the residual stream couples adapters' up.out with backbone layers: it is one group, excluded by `only`
    residual = [g for g in every if any(m.name.endswith("adapter.up") and m.role == "producer" for m in g.members)]
    assert len(residual) == 1 and any("qkv" in m.name for m in residual[0].members)


def test_conv_bn_conv_chain_and_flatten_into_linear():
    model = small_cnn()
    groups = {g.name: g for g in find_groups(model, torch.randn(1, 3, 4, 4))}
    first = groups["0"]
    assert [(m.name, m.role) for m in first.members] == [("0", "producer"), ("1", "other"), ("3", "consumer")]
    assert (first.width, first.fan) == (8, 27)
    assert isinstance(first.activation, nn.ReLU)
    second = groups["3"]
    assert [(m.name, m.role) for m in second.members] == [("3", "producer"), ("4", "other"), ("7", "consumer")]
    # one conv channel feeds 16 flattened Linear inputs: its column view concatenates them
    assert second.columns()[0].shape == (6, 4 * 16)


def test_pruning_a_conv_group_keeps_the_model_consistent():
    model = small_cnn().eval()
    x = torch.randn(2, 3, 4, 4)
    groups = {g.name: g for g in find_groups(model, x[:1])}
    groups["0"].prune([1, 5])
    assert model[0].out_channels == 6 and model[1].num_features == 6 and model[3].in_channels == 6
    assert model(x).shape == (2, 4)


def test_prune_keeps_requires_grad():
    model = tiny_vit()
    mark_trainable(model, adapters=False, head=True)
    g = [g for g in find_groups(model, torch.randn(1, 3, 16, 16)) if g.name == "blocks.0.mlp.fc1"][0]
    g.prune([0, 1, 2])
    assert not model.blocks[0].mlp.fc1.weight.requires_grad and not model.blocks[0].mlp.fc2.weight.requires_grad
    assert model.blocks[0].mlp.fc1.out_features == 125


def test_tiny_swin_adapter_groups():
    model = tiny_swin()
    inject_adapters(model, sigma=4)
    groups = adapter_groups(model, torch.randn(1, 3, 16, 16))
    assert [g.fan for g in groups] == [16, 16, 32, 32] and [g.width for g in groups] == [4, 4, 8, 8]


def test_prune_index_out_of_range_is_refused(vit):
    inject_adapters(vit, sigma=8)
    g = adapter_groups(vit, torch.randn(1, 3, 16, 16))[0]
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        g.prune([4])


def test_a_grouped_conv_reads_each_unit_with_its_conv_groups_kernels():
    # conv -> grouped conv (4 groups of 2 input channels): input channel c is read by the 3 kernels of group c // 2
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, groups=4), nn.Flatten(),
                          nn.LazyLinear(4))
    model(torch.randn(1, 3, 5, 5))
    group = {g.name: g for g in find_groups(model, torch.randn(1, 3, 5, 5))}["0"]
    assert (group.width, group.channel_groups) == (2, 4)  # a unit: one channel of every conv group
    w = model[2].weight
    per_channel = torch.stack([w[(c // 2) * 3:(c // 2 + 1) * 3, c % 2].reshape(-1) for c in range(8)])
    assert torch.equal(group.consumers[0].channel_weights(8), per_channel)
    (columns,) = group.columns()  # unit j: channels j, j + 2, j + 4, j + 6
    assert torch.equal(columns, torch.cat([per_channel[j::2] for j in range(2)]).reshape(2, -1))
