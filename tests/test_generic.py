"""Prune any model: one test over many architecture families, timm and torchvision, random weights, small inputs.

Each row: ``prune(model, x, ratio, target="params")`` leaves a model whose forward works with the same output shape and
whose parameter count is within one unit's cost of the target; ``save_pruned`` / ``load_pruned`` on a freshly built
model reproduce its outputs exactly. A row marked ``refused`` must raise a named error and leave the model unchanged.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import prunekit as pk
from prunekit.budget.search import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


# id: (builder, input size, ratio, expected)
TIMM = {
    # plain, residual and bottleneck CNNs
    "vgg11": ({}, 32, 0.5, "ok"),
    "resnet18": ({}, 32, 0.5, "ok"),
    "resnet50": ({}, 32, 0.5, "ok"),
    # depthwise / inverted residuals, squeeze-excitation, ghost modules
    "mobilenetv2_050": ({}, 32, 0.5, "ok"),
    "efficientnet_b0": ({}, 32, 0.5, "ok"),
    "mobilenetv3_small_050": ({}, 32, 0.5, "ok"),
    "seresnet18": ({}, 32, 0.5, "ok"),
    "ghostnet_050": ({}, 32, 0.5, "ok"),
    # grouped convolutions
    "resnext26ts": ({}, 32, 0.5, "ok"),
    "regnetx_002": ({}, 32, 0.5, "ok"),
    # concatenation
    "densenet121": ({}, 32, 0.5, "ok"),
    # ConvNeXt, MetaFormer, MLP-Mixer
    "convnext_atto": ({}, 32, 0.5, "ok"),
    "poolformerv2_s12": ({}, 32, 0.5, "ok"),
    "mixer_s16_224": ({"img_size": 32}, 32, 0.5, "ok"),
    # plain transformers (DeiT with a distillation head: two outputs)
    "vit_tiny_patch16_224": ({"img_size": 32}, 32, 0.5, "ok"),
    "deit_tiny_distilled_patch16_224": ({"img_size": 32}, 32, 0.5, "ok"),
    # hierarchical and hybrid transformers
    "swin_tiny_patch4_window7_224": ({"img_size": 32, "window_size": 2}, 32, 0.5, "ok"),
    "pvt_v2_b0": ({}, 32, 0.4, "ok"),
    "levit_128s": ({"img_size": 32}, 32, 0.5, "ok"),
    "maxvit_rmlp_pico_rw_256": ({"img_size": 64}, 64, 0.5, "ok"),
    "mobilevit_xxs": ({}, 64, 0.5, "ok"),
    "edgenext_xx_small": ({}, 32, 0.5, "ok"),
}
TORCHVISION = {
    "squeezenet1_1": ({}, 64, 0.5, "ok"),
    # torch-pruning cannot trace its channel split (a ZeroDivisionError in its index mapping): refused by name
    "shufflenet_v2_x0_5": ({}, 64, 0.5, pk.UnsupportedModelError),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 64, 0.5, "ok"),
}
SLOW = {"vgg11", "densenet121", "swin_tiny_patch4_window7_224", "resnet50"}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in TORCHVISION:
        return getattr(torchvision.models, name)(num_classes=10, **TORCHVISION[name][0]).eval()
    return timm.create_model(name, pretrained=False, num_classes=10, **TIMM[name][0]).eval()


def cases():
    for name in list(TIMM) + list(TORCHVISION):
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(name, id=name, marks=marks)


def spec(name):
    return (TIMM | TORCHVISION)[name]


@pytest.mark.parametrize("name", cases())
def test_prune_save_load_any_architecture(name, tmp_path):
    _, size, ratio, expected = spec(name)
    model = build(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    params = count_parameters(model)
    if expected != "ok":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(expected):
            pk.prune(model, x[:1], ratio=ratio, target="params")
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        return
    plan = pk.prune(model, x[:1], ratio=ratio, target="params")
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    assert torch.isfinite(after).all()
    removed = params - count_parameters(model)
    assert plan.meta["params_before"] == params and plan.meta["params_after"] == params - removed
    assert abs(removed - ratio * params) <= plan.meta["budget"]["tolerance"] + 1e-6 * params
    assert plan.meta["macs_after"] < plan.meta["macs_before"]

    pk.save_pruned(model, tmp_path / name)
    fresh = pk.load_pruned(tmp_path / name, build(name))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), after, rtol=0, atol=0)
    assert count_parameters(fresh) == count_parameters(model)


def test_a_prune_refused_after_retries_leaves_the_model_unchanged():
    """PVT-v2 at 64 px breaks on every attempt (its spatial-reduction reshape): prune retries, restoring the model
    each time, then refuses. Restoring twice must not hand back the first attempt's slices (the model once came back
    with 1-channel depthwise convs and a bare RuntimeError)."""
    model = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.UnsupportedModelError, match="the model was restored unchanged"):
        pk.prune(model, x, ratio=0.5, target="params")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_channels_tied_through_a_concatenation_are_one_unit():
    """GhostNet's stem feeds a residual add with ``cat([x1, cheap(x1)])``: torch-pruning removes stem channels j and
    j + n/2 together, so the stem's group has n/2 units of 2 channels. Found from the graph, the first attempt
    prunes cleanly: no group is left out as broken (each used to be, after a failed attempt and a forward probe)."""
    model = timm.create_model("ghostnet_050", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    stem = next(g for g in pk.backbone_groups(verify=False)(model, x) if g.name == "conv_stem")
    assert (stem.width, stem.channel_groups) == (4, 2) and stem.channels([0]) == [0, 4]
    plan = pk.prune(model, x, ratio=0.5, target="params")
    assert list(plan.meta["excluded"]) == ["classifier"]
    assert model(x).shape == (1, 10)
