"""Backbone groups: what they leave out, grouped convs, scorers across layers, the safety net, and invariants."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import prunekit as pk
from prunekit.groups.channels import backbone_groups
from prunekit.core.undo import restore, snapshot
from prunekit.ranking.scorers import ScoreStats, coupled_l1, l2, normalized, score_groups, taylor, SCORERS
from prunekit.ranking.calibration import gather_stats

from conftest import tiny_vit

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_thread")


class Odd(nn.Module):
    """A classifier whose last layer has no telling name, and a feature output."""

    def __init__(self, features: bool = False):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.zzz = nn.Linear(6, 5)
        self.features = features

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return y if self.features else self.zzz(y.mean((2, 3)))


def test_the_output_layer_is_found_in_the_graph_not_by_name():
    groups_fn = backbone_groups(verify=False)
    names = [g.name for g in groups_fn(Odd(), torch.randn(1, 3, 4, 4))]
    assert names == ["a", "b"]
    assert "zzz" in groups_fn.excluded and "model's output" in groups_fn.excluded["zzz"]
    names = [g.name for g in groups_fn(Odd(features=True), torch.randn(1, 3, 4, 4))]
    assert names == ["a"]  # b's channels are what a feature extractor returns


def test_ignore_by_pattern_and_by_module_and_unknown_pattern():
    model = Odd()
    fn = backbone_groups(ignore=["a"], verify=False)
    assert [g.name for g in fn(model, torch.randn(1, 3, 4, 4))] == ["b"]
    assert fn.excluded["a"] == "ignore= covers a" and fn.group_source[1]["ignore"] == ["a"]
    assert [g.name for g in backbone_groups(ignore=[model.b], verify=False)(model, torch.randn(1, 3, 4, 4))] == ["a"]
    with pytest.raises(pk.PrunekitError, match="ignore: no module matches 'bb'; did you mean 'b'"):
        backbone_groups(ignore=["bb"])(model, torch.randn(1, 3, 4, 4))


def test_attention_projections_are_left_to_head_groups_and_mlp_neurons_stay():
    fn = backbone_groups(heads=False)
    groups = {g.name: g for g in fn(tiny_vit(depth=2), torch.randn(1, 3, 16, 16))}
    assert "blocks.0.mlp.fc1" in groups and groups["blocks.0.mlp.fc1"].kind == "neuron"
    assert "patch_embed.proj" in groups and groups["patch_embed.proj"].kind == "channel"  # the residual stream
    assert not any(n.endswith("attn.qkv") for n in groups)
    assert "per-head channels of attention 'blocks.1.attn'" in fn.excluded["blocks.1.attn.qkv"]


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.c3(torch.relu(self.g(torch.relu(self.c1(x))))).mean((2, 3)))


def test_a_grouped_conv_unit_is_one_channel_of_every_conv_group():
    model = Grouped().eval()
    x = torch.randn(2, 3, 5, 5)
    groups = {g.name: g for g in backbone_groups(verify=False)(model, x[:1])}
    g = groups["c1"]
    assert (g.channel_groups, g.width) == (4, 2) and g.fan == 3 * 4
    assert [r.shape for r in g.rows()] == [(2, 12)]
    torch.testing.assert_close(g.rows()[0][0], model.c1.weight[[0, 2, 4, 6]].reshape(-1))
    # the grouped conv reads input channel 2 (conv group 1, column 0) with its output channels 2 and 3
    torch.testing.assert_close(g.columns()[0][1, :18], model.g.weight[0:2, 1].reshape(-1))
    g.prune([0])
    assert model.c1.out_channels == 4 and model.g.in_channels == 4 and model.g.weight.shape[1] == 1
    assert model(x).shape == (2, 2)
    fresh = {h.name: h for h in backbone_groups(verify=False)(model, x[:1])}
    assert fresh["c1"].width == 1


class Rigid(nn.Module):
    """``b``'s channels are read back with a hard-coded width: pruning them breaks the forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        assert y.shape[1] == 8, "b must keep 8 channels"
        return self.fc(y.mean((2, 3)))


def test_a_group_that_breaks_the_forward_is_found_and_left_out():
    model = Rigid().eval()
    x = torch.randn(1, 3, 4, 4)
    plan = pk.prune(model, x, ratio=0.1, target="channels")
    assert "b" in plan.meta["excluded"] and "b must keep 8 channels" in plan.meta["excluded"]["b"]
    assert model.b.out_channels == 8 and model.a.out_channels < 8
    assert model(x).shape == (1, 3)


def test_a_model_that_cannot_be_pruned_is_left_unchanged():
    model = Rigid().eval()
    a, weight = model.a, model.a.weight
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(pk.UnreachableTargetError, match="at most"):
        pk.prune(model, x, ratio=0.9, target="channels")
    assert model.a is a and model.a.weight is weight  # refused before anything changed: even the same tensors
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(pk.UnsupportedModelError, match="no prunable group"):
        pk.prune(model, x, ratio=0.1, target="channels", ignore=["a"])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_snapshot_restores_in_place():
    model = Grouped().eval()
    x = torch.randn(2, 3, 5, 5)
    ref, c1 = model(x), model.c1
    snap = snapshot(model)
    backbone_groups(verify=False)(model, x[:1])[0].prune([0])
    assert model.c1.out_channels == 4
    restore(model, snap)
    assert model.c1 is c1 and model.c1.out_channels == 8
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def test_snapshot_restores_twice():
    """prune() retries after a failed attempt: restore, prune again, restore again must still give the original
    (the restored model must not share the snapshot's parameter dicts, which the second prune would rewrite)."""
    model = Grouped().eval()
    x = torch.randn(2, 3, 5, 5)
    ref = model(x)
    snap = snapshot(model)
    for _ in range(2):
        backbone_groups(verify=False)(model, x[:1])[0].prune([0])
        assert model.c1.out_channels == 4
        restore(model, snap)
        assert model.c1.out_channels == 8
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def test_unknown_target_and_missing_calibration_fail_before_anything():
    model = Odd()
    with pytest.raises(pk.PrunekitError, match="target: unknown 'flops'; allowed: params, macs, channels"):
        pk.prune(model, torch.randn(1, 3, 4, 4), ratio=0.5, target="flops")
    with pytest.raises(pk.PrunekitError, match=r"scorer 'taylor' needs calibration= batches \(\(inputs, targets\)"):
        pk.prune(model, torch.randn(1, 3, 4, 4), ratio=0.5, scorer="taylor")


# --- scorers across unlike layers -------------------------------------------------------------------------------

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_normalisers_by_hand():
    model = mlp()
    (g,) = backbone_groups(verify=False)(model, torch.randn(1, 3))
    raw = coupled_l1(g, ScoreStats())
    torch.testing.assert_close(raw, model[0].weight.abs().sum(1) + model[2].weight.abs().sum(0))
    torch.testing.assert_close(SCORERS.get("l1_mean")(g, ScoreStats()), raw / raw.mean())
    torch.testing.assert_close(SCORERS.get("l1_max")(g, ScoreStats()), raw / raw.max())
    torch.testing.assert_close(normalized(coupled_l1, "l2")(g, ScoreStats()), raw / raw.norm())
    s = l2(g, ScoreStats())
    sq = s.pow(2)
    order = torch.argsort(sq, descending=True)
    expected = torch.empty(4)
    for rank, j in enumerate(order.tolist()):
        expected[j] = sq[j] / sq[order[:rank + 1]].sum()
    torch.testing.assert_close(SCORERS.get("lamp")(g, ScoreStats()), expected)
    assert SCORERS.get("lamp")(g, ScoreStats()).max() == 1.0
    with pytest.raises(pk.PrunekitError, match="normalizer: unknown 'median'"):
        normalized(coupled_l1, "median")


def test_taylor_is_w_times_grad_summed_per_unit_over_batches():
    model = mlp()
    model[0].weight.requires_grad_(False)  # frozen parameters are scored too, and stay frozen
    model[2].weight.grad = torch.ones_like(model[2].weight)  # an existing gradient is kept
    batches = [(torch.randn(5, 3), torch.randint(0, 2, (5,))) for _ in range(2)]
    (g,) = backbone_groups(verify=False)(model, batches[0][0][:1])
    stats = gather_stats(model, [g], taylor, batches)
    expected = torch.zeros(4)
    for x, y in batches:
        probe = mlp()
        probe.load_state_dict(model.state_dict())
        nn.functional.cross_entropy(probe(x), y).backward()
        expected += (probe[0].weight * probe[0].weight.grad).abs().sum(1)
        expected += (probe[2].weight * probe[2].weight.grad).abs().sum(0)
    torch.testing.assert_close(score_groups([g], taylor, stats)[g.name], expected)
    assert not model[0].weight.requires_grad and torch.equal(model[2].weight.grad, torch.ones(2, 4))
    weights = model[0].weight.clone()
    SCORERS.get("taylor_mean")(g, stats)
    assert torch.equal(model[0].weight, weights)  # the weights are back after the swap


def test_prune_with_taylor_and_lamp():
    for scorer in ("taylor", "lamp", "l1_mean"):
        model = Grouped().eval()
        x = torch.randn(4, 3, 5, 5)
        plan = pk.prune(model, x[:1], ratio=0.3, target="params", scorer=scorer,
                        calibration=[(x, torch.randint(0, 2, (4,)))])
        assert plan.meta["scorer"] == scorer and model(x).shape == (4, 2)


# --- invariants ---------------------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, w1, w2, w3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(w1, w2, 1), nn.BatchNorm2d(w2), nn.ReLU(),
                               nn.Conv2d(w2, w2, 3, padding=1, groups=w2), nn.BatchNorm2d(w2), nn.ReLU(),
                               nn.Conv2d(w2, w1, 1), nn.BatchNorm2d(w1))
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(w1 * 4, w3), nn.GELU(), nn.Linear(w3, 2))

    def forward(self, x):
        x = self.stem(x)
        return self.mlp(torch.relu(x + self.a(x)))


@SETTINGS
@given(widths=st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7)), seed=st.integers(0, 1000),
       data=st.data())
def test_pruning_units_whose_outgoing_weights_are_zero_changes_nothing(widths, seed, data):
    torch.manual_seed(seed)
    model = Block(*widths).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial running statistics
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
    groups = backbone_groups(verify=False)(model, x[:1])
    g = data.draw(st.sampled_from(groups))
    dead = data.draw(st.lists(st.integers(0, g.width - 1), unique=True, min_size=1, max_size=g.width - 1))
    channels = set(g.channels(dead))
    with torch.no_grad():  # every weight that reads a dead unit is zero: the unit cannot reach the output
        for m in g.consumers:
            for i, r in zip(m.idxs, m.root_idxs):
                if r in channels:
                    m.module.weight[:, i] = 0
    before = model(x)
    pk.Plan(widths={h.name: h.width for h in groups}, remove={g.name: dead}).apply(model, groups)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    after = {h.name: h.width for h in backbone_groups(verify=False)(model, x[:1])}
    assert {h.name: after[h.name] for h in groups} == {h.name: h.width - (len(dead) if h is g else 0) for h in groups}


def test_engine_restores_a_model_its_prune_breaks():
    model = Rigid().eval()
    x = torch.randn(4, 3, 4, 4)
    y = torch.randint(0, 3, (4,))

    def train(m, opt, cycle):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {}

    engine = pk.Engine(model, train, example_inputs=x[:1], scorer="l1", budget=pk.Budget.channels(0.5),
                       groups_fn=backbone_groups(verify=False))
    b = model.b
    with pytest.raises(pk.UnsupportedModelError, match=r"the pruned model does not run \(AssertionError: b must keep "
                                                       r"8 channels\); the model was restored"):
        engine.run()
    assert model.b is b and model.b.out_channels == 8 and model.a.out_channels == 8
    assert model(x).shape == (4, 3)
    # with the one-unit probe (the default), the group that breaks is left out up front
    history = pk.Engine(model, train, example_inputs=x[:1], scorer="l1", budget=pk.Budget.channels(0.4),
                        groups_fn=backbone_groups()).run()
    assert history[0].widths == {"a": 8} and history[-1].widths["a"] < 8 and model.b.out_channels == 8


def test_load_pruned_refuses_another_architecture(tmp_path):
    model = Block(4, 5, 6).eval()
    x = torch.randn(2, 3, 2, 2)
    pk.prune(model, x[:1], ratio=0.3)
    pk.save_pruned(model, tmp_path / "m")
    with pytest.raises(pk.ArchitectureMismatchError, match=r"plan 0 of .* does not fit this model \(a.0.weight: "
                                                            r"expected shape \(5, 4, 1, 1\) before pruning, the model "
                                                            r"has \(6, 4, 1, 1\)"):
        pk.load_pruned(tmp_path / "m", Block(4, 6, 6))
    with pytest.raises(pk.ArchitectureMismatchError, match="holds a pruned test_backbone.Block, got a "
                                                            "test_backbone.Grouped"):
        pk.load_pruned(tmp_path / "m", Grouped())
    fresh = pk.load_pruned(tmp_path / "m", Block(4, 5, 6))
    torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)
    assert pk.applied_plans(fresh)[0].remove == pk.applied_plans(model)[0].remove
    with pytest.raises(pk.PrunekitError, match="no plans for this model; pass plans="):
        pk.save_pruned(Block(4, 5, 6), tmp_path / "n")
