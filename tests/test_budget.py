"""Budgets and scopes hit their targets: exactly in units, within one unit's cost in parameters and MACs."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import prunekit as pk
from prunekit.budget.search import Budget, CostModel, count_macs, count_parameters, mac_weights, unit_limits
from prunekit.budget.unitsearch import select_cost
from prunekit.groups.channels import backbone_groups
from prunekit.core.policy import Policy, UnreachableTargetError, removal_steps, round_half_up
from prunekit.ranking.scopes import Limit, SCOPES, capacity, global_scope, local_scope

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL_SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCOPE_NAMES = ["local", "global"]


pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def scored_groups(draw, max_groups=6, max_width=14, round_to=False):
    n = draw(st.integers(1, max_groups))
    widths = draw(st.lists(st.integers(1, max_width), min_size=n, max_size=n))
    scores = {f"g{i}": torch.tensor(draw(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=w,
                                                  max_size=w))) for i, w in enumerate(widths)}
    limits = {}
    for i, w in enumerate(widths):
        lowest = draw(st.integers(0, w))
        step = draw(st.integers(1, 4)) if round_to else 1
        limits[f"g{i}"] = Limit(lowest, step)
    return scores, limits


@SETTINGS
@given(case=scored_groups(), data=st.data(), scope=st.sampled_from(SCOPE_NAMES))
def test_every_scope_removes_exactly_the_target_within_limits(case, data, scope):
    scores, limits = case
    most = capacity({k: len(v) for k, v in scores.items()}, limits)
    target = data.draw(st.integers(0, most))
    plan = SCOPES.get(scope)(scores, target=target, limits=limits)
    assert plan.n_removed == target
    for k, n in plan.widths_after().items():
        assert n >= limits[k].lowest or n == len(scores[k])


@SETTINGS
@given(case=scored_groups(round_to=True), data=st.data(), scope=st.sampled_from(SCOPE_NAMES))
def test_with_round_to_every_scope_stops_less_than_one_step_short(case, data, scope):
    scores, limits = case
    most = capacity({k: len(v) for k, v in scores.items()}, limits)
    target = data.draw(st.integers(0, most))
    plan = SCOPES.get(scope)(scores, target=target, limits=limits)
    assert target - max(lim.round_to for lim in limits.values()) < plan.n_removed <= target
    for k, n in plan.widths_after().items():
        assert n == len(scores[k]) or (n % limits[k].round_to == 0 and n >= limits[k].lowest)


@SETTINGS
@given(case=scored_groups(), data=st.data())
def test_local_is_largest_remainder_rounding(case, data):
    scores, _ = case
    widths = {k: len(v) for k, v in scores.items()}
    total = sum(widths.values())
    target = data.draw(st.integers(0, total))
    plan = local_scope(scores, target=target)
    assert plan.n_removed == target
    for k, n in widths.items():  # every group gets its quota rounded down or up
        quota = target * n / total
        assert math.floor(quota + 1e-9) <= len(plan.remove.get(k, [])) <= math.ceil(quota - 1e-9)


@SETTINGS
@given(case=scored_groups(), data=st.data())
def test_global_removes_the_lowest_scores_of_the_groups_not_at_their_limit(case, data):
    scores, limits = case
    most = capacity({k: len(v) for k, v in scores.items()}, limits)
    target = data.draw(st.integers(0, most))
    plan = global_scope(scores, target=target, limits=limits)
    removed = [float(scores[k][i]) for k, idx in plan.remove.items() for i in idx]
    open_groups = [k for k in scores if len(plan.remove.get(k, [])) < removal_steps(len(scores[k]),
                                                                                     *limits[k])[-1]]
    kept = [float(scores[k][i]) for k in open_groups for i in plan.keep(k)]
    if removed and kept:
        assert max(removed) <= min(kept)


def test_a_target_beyond_the_limits_is_refused_naming_the_most():
    scores = {"a": torch.arange(4.0), "b": torch.arange(6.0)}
    with pytest.raises(UnreachableTargetError, match="allow at most 7"):
        global_scope(scores, target=8, limits={"a": Limit(1), "b": Limit(2)})


def test_local_hits_the_sigma_target_the_grid_missed():
    # adapters of widths 3, 3, 6, 6 (fans 96, 96, 192, 192: sigma 32); sigma 64 and 128 must end at different widths
    scores = {n: torch.rand(w) for n, w in zip("abcd", (3, 3, 6, 6))}
    fan = 576
    ends = {}
    for sigma in (64, 128, 256, 512):
        keep = math.floor(fan / sigma)
        plan = local_scope(scores, target=18 - keep)
        ends[sigma] = sum(plan.widths_after().values())
        assert ends[sigma] == keep
    assert ends == {64: 9, 128: 4, 256: 2, 512: 1}


# --- parameter and MAC budgets on real layers ------------------------------------------------------------------

class Net(nn.Module):
    """A small CNN with a residual add, a depthwise conv and an uneven width per stage."""

    def __init__(self, w1: int, w2: int, w3: int, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(w1, w2, 1), nn.BatchNorm2d(w2), nn.ReLU(),
                               nn.Conv2d(w2, w2, 3, padding=1, groups=w2), nn.BatchNorm2d(w2), nn.ReLU(),
                               nn.Conv2d(w2, w1, 1), nn.BatchNorm2d(w1))
        self.b = nn.Sequential(nn.Conv2d(w1, w3, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w3 * 4, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        return self.head(self.b(x))


X = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
widths_st = st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9))


def net(widths, seed=0):
    torch.manual_seed(seed)
    return Net(*widths).eval()


@MODEL_SETTINGS
@given(widths=widths_st, data=st.data())
def test_cost_model_counts_parameters_exactly_cross_terms_included(widths, data):
    model = net(widths)
    groups = backbone_groups(verify=False)(model, X[:1])
    limits = unit_limits(groups)
    counts = {g.name: data.draw(st.sampled_from(removal_steps(g.width, *limits[g.name]))) for g in groups}
    predicted = CostModel(groups).removed(counts)
    before = count_parameters(model)
    pk.Plan(widths={g.name: g.width for g in groups},
            remove={g.name: list(range(counts[g.name])) for g in groups}).apply(model, groups)
    assert before - count_parameters(model) == predicted
    assert model(X).shape == (2, 3)


@MODEL_SETTINGS
@given(widths=widths_st, ratio=st.floats(0.05, 0.95), scope=st.sampled_from(SCOPE_NAMES))
def test_params_selection_lands_within_one_unit(widths, ratio, scope):
    model = net(widths)
    groups = backbone_groups(verify=False)(model, X[:1])
    cost = CostModel(groups)
    limits = unit_limits(groups)
    most = cost.removed({g.name: removal_steps(g.width, *limits[g.name])[-1] for g in groups})
    goal = ratio * most
    scores = {g.name: torch.rand(g.width, generator=torch.Generator().manual_seed(1)) for g in groups}
    plan = select_cost(SCOPES.get(scope), scores, goal, cost, limits)
    before = count_parameters(model)
    plan.apply(model, groups)
    assert abs((before - count_parameters(model)) - goal) <= cost.max_unit_cost(limits)


@settings(max_examples=5, deadline=None)
@given(widths=widths_st, ratio=st.floats(0.1, 0.6), scope=st.sampled_from(SCOPE_NAMES))
def test_prune_meets_params_macs_and_channels_budgets(widths, ratio, scope):
    for target in ("params", "macs", "channels"):
        model = net(widths)
        groups = backbone_groups(verify=False)(model, X[:1])
        limits = unit_limits(groups)
        most = {g.name: removal_steps(g.width, *limits[g.name])[-1] for g in groups}
        start = {"params": count_parameters(model), "macs": count_macs(model, X[:1]),
                 "channels": sum(g.width for g in groups)}[target]
        weights = mac_weights(model, X[:1])[1] if target == "macs" else None
        reachable = (sum(most.values()) if target == "channels" else CostModel(groups, weights).removed(most)) / start
        if ratio > reachable:
            with pytest.raises(UnreachableTargetError, match=f"at most {reachable:.4f}"):
                pk.prune(model, X[:1], ratio=ratio, target=target, scope=scope)
            continue
        plan = pk.prune(model, X[:1], ratio=ratio, target=target, scope=scope)
        tol = plan.meta["budget"]["tolerance"]
        if target == "channels":  # units: exactly round(ratio * N)
            assert plan.n_removed == round_half_up(ratio * start) and tol == 0
        else:
            after = plan.meta[f"{target}_after"]
            assert abs((start - after) - ratio * start) <= tol + 1e-6 * start
        assert model(X).shape == (2, 3)


def test_budget_values_are_checked_and_named():
    with pytest.raises(pk.PrunekitError, match=r"ratio: .* in \(0, 1\), got 1.5"):
        Budget.params(1.5)
    with pytest.raises(pk.PrunekitError, match="budget.kind: unknown 'flops'; allowed: sigma, params, macs"):
        Budget("flops", 0.5)
    with pytest.raises(pk.PrunekitError, match="sigma_target: expected a compression rate > 0"):
        Budget.sigma(0)
    assert str(Budget.macs(0.25)) == "macs ratio=0.25" and Budget.channels(0.5).counts_units


def test_policy_lowest_width_and_steps():
    p = Policy(min_width=1, round_to=8, max_ratio=0.75)
    assert p.lowest(100) == 32
    assert removal_steps(100, 32, 8) == [0, 4, 12, 20, 28, 36, 44, 52, 60, 68]
    with pytest.raises(pk.PrunekitError, match="min_width: 0 lets a group lose every unit; give on_empty="):
        Policy(min_width=0)
    with pytest.raises(pk.PrunekitError, match="round_to: expected an integer >= 1, got 0"):
        Policy(round_to=0)


def test_count_macs_matches_torch_pruning_and_leaves_the_model_alone():
    """prunekit counts with torch-pruning's formulas as hooks on the model itself: the same total as torch-pruning's
    own counter and its per-layer MACs per sample (torch-pruning's per-layer counts cover the whole batch), no hook or
    attribute left on the model, its mode and weights untouched."""
    import torch_pruning as tp

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    model.train()
    x = torch.randn(2, 3, 6, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    macs, _, layers, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    total, weights = mac_weights(model, x)
    assert count_macs(model, x) == total == int(macs)
    conv = model[0]
    assert weights[id(conv.weight)] == layers[conv] / len(x) / (conv.weight.numel() + conv.bias.numel())
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "__flops__") or m._forward_hooks for m in model.modules())
