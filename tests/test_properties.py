"""Invariants of slicing and selection, checked with hypothesis."""
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from prunekit import AdapterConfig, Plan, count_parameters, find_adapters, inject_adapters
from prunekit.adapters.groups import adapter_groups
from prunekit.ranking.scopes import global_scope, local_scope, round_half_up

SETTINGS = settings(max_examples=40, deadline=None)


class TwoBlocks(nn.Module):
    def __init__(self, m: int):
        super().__init__()
        self.attn = nn.Linear(m, m)
        self.mlp = nn.Sequential(nn.Linear(m, 2 * m), nn.GELU(), nn.Linear(2 * m, m))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


def build(m: int, n: int, seed: int, kind: str = "series") -> TwoBlocks:
    torch.manual_seed(seed)
    model = TwoBlocks(m).eval()
    inject_adapters(model, AdapterConfig(hidden=n, targets=["attn", "mlp"], kind=kind))
    for a in find_adapters(model).values():
        nn.init.normal_(a.up.weight)
        nn.init.normal_(a.up.bias)
    return model


dims = st.integers(2, 8)
widths = st.integers(1, 8)


@SETTINGS
@given(m=dims, n=widths, seed=st.integers(0, 10_000), data=st.data(), kind=st.sampled_from(["series", "parallel"]))
def test_slicing_keeps_exactly_the_selected_neurons(m, n, seed, data, kind):
    model = build(m, n, seed, kind)
    reference = build(m, n, seed, kind)
    drop = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    x = torch.randn(5, m, generator=torch.Generator().manual_seed(seed))
    groups = adapter_groups(model, x[:1])
    Plan(widths={g.name: g.width for g in groups}, remove={groups[0].name: drop}).apply(model, groups)
    with torch.no_grad():  # the full adapter with the dropped neurons masked out
        reference.attn.adapter.up.weight[:, drop] = 0
    assert model.attn.adapter.hidden == n - len(drop)
    torch.testing.assert_close(model(x), reference(x))


@SETTINGS
@given(m=dims, n=widths, seed=st.integers(0, 10_000), data=st.data())
def test_removing_zero_row_and_column_neurons_changes_nothing(m, n, seed, data):
    model = build(m, n, seed)
    # at most n - 1: an adapter that loses every neuron is removed with its up bias (tested below)
    dead = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    with torch.no_grad():
        for a in find_adapters(model).values():
            a.down.weight[dead] = 0
            a.up.weight[:, dead] = 0
    x = torch.randn(4, m, generator=torch.Generator().manual_seed(seed + 1))
    before = model(x)
    groups = adapter_groups(model, x[:1])
    Plan(widths={g.name: g.width for g in groups}, remove={g.name: dead for g in groups}).apply(model, groups)
    torch.testing.assert_close(model(x), before)
    assert sum(a.hidden for a in find_adapters(model).values()) == (n - len(dead)) * len(find_adapters(model))


@SETTINGS
@given(m=dims, n=widths, seed=st.integers(0, 10_000), kind=st.sampled_from(["series", "parallel"]))
def test_emptied_adapter_is_the_identity_and_costs_nothing(m, n, seed, kind):
    model = build(m, n, seed, kind)
    torch.manual_seed(seed)
    backbone = TwoBlocks(m).eval()
    x = torch.randn(3, m)
    groups = adapter_groups(model, x[:1])
    attn = groups[0]
    removed = Plan(widths={g.name: g.width for g in groups}, remove={attn.name: list(range(n))}).apply(model, groups)
    assert removed == ["attn.adapter"]
    assert type(model.attn) is nn.Linear  # the wrapper is gone: no call, no parameter, no stray bias
    assert not any(name.startswith("attn.adapter") for name, _ in model.named_parameters())
    torch.testing.assert_close(model.attn(x), backbone.attn(x), rtol=0, atol=0)
    assert count_parameters(model) == count_parameters(backbone) + 2 * n * m + n + m  # only the mlp adapter left


scores_st = st.dictionaries(
    keys=st.sampled_from([f"g{i}" for i in range(6)]),
    values=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=12),
    min_size=1, max_size=6,
)


@SETTINGS
@given(scores=scores_st, fraction=st.floats(0, 1))
def test_global_removes_exactly_round_rho_n_lowest(scores, fraction):
    tensors = {k: torch.tensor(v) for k, v in scores.items()}
    total = sum(len(v) for v in scores.values())
    plan = global_scope(tensors, fraction)
    assert plan.n_removed == round_half_up(fraction * total)
    removed = [scores[k][i] for k, idx in plan.remove.items() for i in idx]
    kept = [scores[k][i] for k in scores for i in plan.keep(k)]
    if removed and kept:
        assert max(removed) <= min(kept)
    assert set(plan.widths) == set(scores)


def test_global_can_empty_a_group_and_local_cannot_choose_one():
    tensors = {"small": torch.tensor([0.1, 0.2]), "big": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    g = global_scope(tensors, 1 / 3)
    assert g.remove == {"small": [0, 1]} and g.emptied() == ["small"]
    loc = local_scope(tensors, 0.5)
    assert loc.widths_after() == {"small": 1, "big": 2}
    assert loc.remove == {"small": [0], "big": [0, 1]}


@SETTINGS
@given(scores=scores_st, fraction=st.floats(0, 1))
def test_local_removes_the_same_fraction_everywhere(scores, fraction):
    plan = local_scope({k: torch.tensor(v) for k, v in scores.items()}, fraction)
    for k, v in scores.items():
        assert len(plan.remove.get(k, [])) == min(len(v), round_half_up(fraction * len(v)))


@SETTINGS
@given(scores=scores_st, fraction=st.floats(0, 1))
def test_plan_json_round_trip(scores, fraction):
    plan = global_scope({k: torch.tensor(v) for k, v in scores.items()}, fraction)
    again = Plan.from_dict(plan.to_dict())
    assert again.widths == plan.widths and again.remove == plan.remove and again.meta == plan.meta


def _naive_global(scores: dict, k: int, lowest: dict) -> dict:
    """Reference: take the lowest-scored unit of all groups (ties: group order, then index), one at a time, skipping a
    group at its lowest width."""
    left = {g: list(range(len(v))) for g, v in scores.items()}
    removed = {g: [] for g in scores}
    order = list(scores)
    for _ in range(k):
        cands = [(scores[g][i], order.index(g), i, g) for g in order if len(left[g]) > lowest[g] for i in left[g]]
        _, _, i, g = min(cands)
        left[g].remove(i)
        removed[g].append(i)
    return {g: sorted(v) for g, v in removed.items() if v}


@SETTINGS
@given(scores=scores_st, data=st.data())
def test_global_plans_for_every_k_match_a_naive_global_selection(scores, data):
    """``global_plans`` (one ranking, nested plans, what the budget search uses) == ``global_scope`` == a naive
    one-at-a-time selection, for every k up to the limits' capacity."""
    from prunekit.ranking.scopes import Limit, capacity, global_plans

    lowest = {g: data.draw(st.integers(0, len(v))) for g, v in scores.items()}
    limits = {g: Limit(lowest[g]) for g in scores}
    tensors = {k: torch.tensor(v) for k, v in scores.items()}
    plan_for = global_plans(tensors, limits)
    for k in range(capacity({g: len(v) for g, v in scores.items()}, limits) + 1):
        fast, scope = plan_for(k), global_scope(tensors, target=k, limits=limits)
        assert fast.remove == scope.remove == _naive_global(scores, k, lowest)
        assert fast.meta == scope.meta
