"""Attention heads as prunable groups: many timm families, slicing invariants, refusals."""
import copy

import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st
from timm.layers.attention import Attention
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from prunekit import AdapterConfig, inject_adapters
from prunekit.groups.heads import (
    HeadGroup,
    UnsupportedAttentionError,
    attention_modules,
    head_dim_groups,
    head_groups,
)
from prunekit.ranking.scorers import ScoreStats, coupled_l1, l1_down, score_groups, tina

SETTINGS = settings(max_examples=12, deadline=None)


def vit():
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4,
                             num_classes=5)


def deit():
    return timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=5)


def swin():
    return SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4),
                           num_classes=5)


def pvt():
    return timm.create_model("pvt_v2_b0", depths=(1, 1, 1, 1), num_classes=5)


def vit_rope():
    return timm.create_model("vit_small_patch16_rope_224", img_size=32, patch_size=8, embed_dim=48, depth=2,
                             num_heads=4, num_classes=5)


# family -> (builder, input size, detected attention class)
FAMILIES = {
    "vit": (vit, 32, "Attention"),
    "deit": (deit, 32, "Attention"),
    "swin": (swin, 32, "WindowAttention"),
    "pvt_v2": (pvt, 64, "Attention"),
    "vit_rope": (vit_rope, 32, "AttentionRope"),
}


def build(family: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    make, size, _ = FAMILIES[family]
    torch.manual_seed(seed)
    model = make().eval()
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_well_formed(g: HeadGroup) -> None:
    """num_heads matches every sliced tensor: qkv/q/kv rows, proj columns, tables."""
    m, heads, hd = g.module, g.num_heads, g.head_dim
    for s, t in ((s, t) for s in g.layout.slices if (t := _get(m, s.path)) is not None):
        size = t.shape[s.dim]
        assert size % (s.repeats * heads) == 0 and (not s.within_head or size == s.repeats * heads * hd), \
            f"{g.name}: {s.path} has {size} along dim {s.dim} for {heads} heads of {hd}"
    assert m.proj.in_features == m.proj.weight.shape[1] == heads * hd
    if hasattr(m, "qkv") and isinstance(m.qkv, nn.Linear):
        assert m.qkv.out_features == m.qkv.weight.shape[0] == 3 * heads * hd
    if hasattr(m, "relative_position_bias_table"):
        assert m.relative_position_bias_table.shape[1] == heads
    if hasattr(m, "attn_dim"):
        assert m.attn_dim == heads * hd


def _get(m: nn.Module, path: str):
    owner, _, attr = path.rpartition(".")
    try:
        t = getattr(m.get_submodule(owner) if owner else m, attr)
    except AttributeError:
        return None
    return t if isinstance(t, torch.Tensor) else None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_heads_keeps_forward_shape_and_removes_unit_params(family):
    model, x = build(family)
    before = model(x)
    groups = head_groups(model)
    cls = FAMILIES[family][2]
    assert groups and all(g.kind == "head" and g.name.endswith(".attn.heads") for g in groups)
    assert {type(m).__name__ for m in attention_modules(model).values()} == {cls}
    total, expected_drop = n_params(model), 0
    for i, g in enumerate(groups):
        if g.width < 2:
            continue
        drop = [0] if i % 2 else list(range(1, g.width))  # a single head, or all but one
        expected_drop += len(drop) * g.unit_params()
        width = g.width
        g.prune(drop)
        assert g.width == width - len(drop) == g.module.num_heads
        assert_well_formed(g)
    assert expected_drop > 0
    after = model(x)
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert total - n_params(model) == expected_drop


def test_unit_params_closed_forms():
    model, _ = build("vit")
    g = head_groups(model)[0]
    C, hd = 48, 12
    assert (g.width, g.head_dim, g.fan) == (4, hd, 3 * hd * C)
    assert g.unit_params() == 3 * hd * C + 3 * hd + C * hd  # qkv rows + qkv bias + proj columns
    model, _ = build("swin")
    g = head_groups(model)[0]  # first stage: C = 24, 2 heads of 12, window 4 -> (2*4-1)^2 table rows
    assert g.unit_params() == 3 * 12 * 24 + 3 * 12 + 24 * 12 + 7 * 7
    assert "relative_position_bias_table:other" in repr(g) and "heads=2" in repr(g)


def _zero_heads(model: nn.Module, groups: list[HeadGroup], drop: dict[str, list[int]], v_too: bool) -> None:
    """Zero the proj columns (and v rows + bias) of the given heads of fused-qkv attention."""
    with torch.no_grad():
        for g in groups:
            m, hd, heads = g.module, g.head_dim, g.width
            for h in drop[g.name]:
                m.proj.weight[:, h * hd:(h + 1) * hd] = 0
                if v_too:
                    v = slice((2 * heads + h) * hd, (2 * heads + h + 1) * hd)
                    m.qkv.weight[v] = 0
                    if m.qkv.bias is not None:
                        m.qkv.bias[v] = 0


def _draw_drops(data, groups: list[HeadGroup]) -> dict[str, list[int]]:
    out = {}
    for g in groups:
        k = data.draw(st.integers(0, g.width - 1), label=f"{g.name} count")
        out[g.name] = sorted(data.draw(st.permutations(range(g.width)), label=f"{g.name} order")[:k])
    return out


_BASE = {f: build(f) for f in ("vit", "swin")}


@SETTINGS
@given(family=st.sampled_from(sorted(_BASE)), data=st.data())
def test_zeroed_heads_prune_without_changing_the_output(family, data):
    base, x = _BASE[family]
    model = copy.deepcopy(base)
    groups = head_groups(model)
    drop = _draw_drops(data, groups)
    _zero_heads(model, groups, drop, v_too=True)
    reference = model(x)
    for g in groups:
        g.prune(drop[g.name])
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(family=st.sampled_from(sorted(_BASE)), data=st.data())
def test_slicing_equals_masking_proj_columns(family, data):
    base, x = _BASE[family]
    masked, sliced = copy.deepcopy(base), copy.deepcopy(base)
    drop = _draw_drops(data, head_groups(masked))
    _zero_heads(masked, head_groups(masked), drop, v_too=False)
    for g in head_groups(sliced):
        g.prune(drop[g.name])
    torch.testing.assert_close(sliced(x), masked(x), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(family=st.sampled_from(sorted(_BASE)), data=st.data())
def test_zeroed_head_dims_prune_without_changing_the_output(family, data):
    base, x = _BASE[family]
    model = copy.deepcopy(base)
    groups = head_dim_groups(model)
    assert [g.kind for g in groups] == ["head_dim"] * len(groups)
    drop = _draw_drops(data, groups)
    with torch.no_grad():
        for g in groups:
            m, heads, hd = g.module, g.num_heads, g.head_dim
            for d in drop[g.name]:
                rows = [(j * heads + h) * hd + d for j in range(3) for h in range(heads)]
                m.qkv.weight[rows] = 0
                if m.qkv.bias is not None:
                    m.qkv.bias[rows] = 0
                m.proj.weight[:, [h * hd + d for h in range(heads)]] = 0
    reference = model(x)
    for g in groups:
        g.prune(drop[g.name])
        assert g.head_dim == g.width and g.module.scale == pytest.approx(g.head_dim ** -0.5)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)


def test_head_dim_group_shapes_and_fused_path_match_the_manual_path():
    model, x = build("vit")
    g = head_dim_groups(model)[0]
    assert (g.width, g.fan, g.unit_params()) == (12, 3 * 4 * 48, 3 * 4 * 48 + 3 * 4 + 48 * 4)
    g.prune([0, 5, 11])
    m = g.module
    assert (m.head_dim, m.attn_dim, m.qkv.out_features, m.proj.in_features) == (9, 36, 108, 36)
    fused = model(x)
    m.fused_attn = False  # the manual path reads self.scale; both must agree after the temperature fold
    torch.testing.assert_close(model(x), fused, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,equivalent,head_dim", [
    ({"gated": True}, True, True),
    ({"qk_norm": True, "norm_layer": nn.LayerNorm}, True, False),
    ({"scale_norm": True, "norm_layer": nn.LayerNorm}, False, True),  # a norm over all heads: not output-preserving
])
def test_timm_attention_options(kwargs, equivalent, head_dim):
    torch.manual_seed(0)
    model = nn.Sequential(Attention(32, num_heads=4, qkv_bias=True, **kwargs)).eval()
    x = torch.randn(2, 5, 32)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked[0].proj.weight[:, 8:16] = 0
    (g,) = head_groups(model)
    total, unit = n_params(model), g.unit_params()
    g.prune([1])
    assert_well_formed(g)
    assert total - n_params(model) == unit and model(x).shape == (2, 5, 32)
    assert torch.allclose(model(x), masked(x), atol=1e-6) == equivalent
    assert len(head_dim_groups(model)) == int(head_dim)


def test_l1_scorers_score_heads_out_of_the_box():
    model, _ = build("vit")
    groups = head_groups(model)
    g = groups[0]
    m, hd, heads = g.module, g.head_dim, g.width
    w = m.qkv.weight.detach().abs()
    down = torch.stack([sum(w[(j * heads + h) * hd:(j * heads + h + 1) * hd].sum() for j in range(3))
                        for h in range(heads)])
    up = torch.stack([m.proj.weight.detach().abs()[:, h * hd:(h + 1) * hd].sum() for h in range(heads)])
    torch.testing.assert_close(l1_down(g, ScoreStats()), down)
    torch.testing.assert_close(coupled_l1(g, ScoreStats()), down + up)
    torch.testing.assert_close(tina(g, ScoreStats()), (down + up) / (heads + 3 * hd * 48))
    scores = score_groups(groups, coupled_l1)
    assert set(scores) == {"blocks.0.attn.heads", "blocks.1.attn.heads"}
    g.prune([int(scores[g.name].argmin())])
    assert coupled_l1(g, ScoreStats()).shape == (heads - 1,)


def test_frozen_backbone_keeps_requires_grad_flags():
    model, x = build("swin")
    for n, p in model.named_parameters():
        p.requires_grad_("proj" in n)  # some trainable, the rest frozen
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for g in head_groups(model):
        g.prune([0])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    model(x).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_pruned_weights_reload_after_replaying_the_same_prune():
    model, x = build("pvt_v2")
    drops = {}
    for g in head_groups(model):
        drops[g.name] = list(range(1, g.width, 2))
        g.prune(drops[g.name])
    fresh, _ = build("pvt_v2", seed=1)
    for g in head_groups(fresh):
        g.prune(drops[g.name])
    fresh.load_state_dict(model.state_dict())  # strict: same keys, same shapes
    torch.testing.assert_close(fresh(x), model(x))
    clone = copy.deepcopy(model)  # the switched PVT-v2 forward class survives a copy
    torch.testing.assert_close(clone(x), model(x))
    assert type(model.stages[3].blocks[0].attn).__name__ == "_PvtV2AttentionAnyWidth"


def test_heads_of_adapter_wrapped_attention():
    model, x = build("vit")
    inject_adapters(model, AdapterConfig(sigma=8))
    groups = head_groups(model)
    assert [g.name for g in groups] == ["blocks.0.attn.base_layer.heads", "blocks.1.attn.base_layer.heads"]
    for g in groups:
        g.prune([1, 2])
    assert model(x).shape == (2, 5)


def test_bad_indices_and_min_width():
    model, _ = build("vit")
    g = head_groups(model, min_heads=2)[0]
    assert g.policy.min_width == 2 and g.policy.round_to == 1 and g.policy.max_ratio == 1.0  # no rounding, no cap
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        g.prune([4])
    with pytest.raises(IndexError):
        g.prune([-1])
    with pytest.raises(Exception, match="min_width=2"):
        g.prune([0, 1, 2])
    assert g.width == 4
    with pytest.raises(Exception, match="min_heads"):
        head_groups(model, min_heads=0)


class InterleavedAttention(nn.Module):
    """num_heads + qkv + proj, but q/k/v interleaved per head (LeViT-style): slicing [q|k|v] blocks would be wrong."""

    def __init__(self, dim: int = 16, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, self.num_heads, 3, -1).permute(3, 0, 2, 1, 4)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2).reshape(B, N, -1))


class FixedWidthAttention(InterleavedAttention):
    """Standard [q|k|v] layout, but the forward reshapes with the input width C."""

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2).reshape(B, N, C))


class PlainAttention(InterleavedAttention):
    """Standard layout and a forward that reads -1: accepted after verification."""

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2).reshape(B, N, -1))


class NoProjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = 2
        self.to_out = nn.Linear(8, 8)

    def forward(self, x):
        return self.to_out(x)


@pytest.mark.parametrize("cls,match", [(InterleavedAttention, "layout is different"),
                                       (FixedWidthAttention, "input width"),
                                       (NoProjection, "no fused 'qkv'")])
def test_unknown_layout_is_refused_before_anything_changes(cls, match):
    torch.manual_seed(0)
    model = nn.Sequential(PlainAttention(), cls())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedAttentionError, match=rf"1 attention module.*'?1'?: {cls.__name__}: .*{match}"):
        head_groups(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and model[0].num_heads == 4
    assert list(attention_modules(model)) == ["0"]
    (g,) = head_groups(model, ignore=["1"])
    x = torch.randn(2, 5, 16)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked[0].proj.weight[:, 4:8] = 0
    g.prune([1])
    torch.testing.assert_close(model[0](x), masked[0](x))


def test_real_timm_families_refused_with_reasons():
    levit = timm.create_model("levit_128s", img_size=32, num_classes=5)
    with pytest.raises(UnsupportedAttentionError, match=r"stages\.0\.blocks\.0\.attn: Attention: .*LinearNorm"):
        head_groups(levit)
    cait = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, depth=1, num_classes=5)
    with pytest.raises(UnsupportedAttentionError, match=r"TalkingHeadAttn: parameterised children \['proj_l'"):
        head_groups(cait)
    assert attention_modules(cait) == {}
