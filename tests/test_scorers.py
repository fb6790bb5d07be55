"""Every scorer against values computed by hand on fixed small weights."""
import math

import pytest
import torch
from torch import nn

from prunekit import AdapterConfig, PrunekitError, UnknownNameError, inject_adapters
from prunekit.adapters.groups import adapter_groups
from prunekit.ranking.scorers import (SCORERS, ScoreStats, combine, coupled_l1, get_scorer, l1_activation, l1_down,
                                      needs_activations, random_score, scaled,
                                      score_groups, tina)
from prunekit.ranking.calibration import collect_activations

DOWN = [[1.0, -2.0, 3.0], [0.0, 0.5, -1.0]]  # W_down: n=2 rows, m=3
UP = [[1.0, 0.0], [-1.0, 2.0], [0.5, -0.5]]  # W_up: m=3 x n=2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(3, 3)

    def forward(self, x):
        return self.attn(x)


@pytest.fixture
def group():
    model = Block()
    inject_adapters(model, AdapterConfig(hidden=2, targets=["attn"]))
    a = model.attn.adapter
    with torch.no_grad():
        model.attn.base_layer.weight.copy_(torch.eye(3))  # the adapter's input h is the sub-layer's output: h = x
        model.attn.base_layer.bias.zero_()
        a.down.weight.copy_(torch.tensor(DOWN))
        a.down.bias.copy_(torch.tensor([0.5, -0.25]))
        a.up.weight.copy_(torch.tensor(UP))
    (g,) = adapter_groups(model, torch.zeros(1, 3))
    return model, g


def test_l1_down_is_the_down_row_only(group):
    _, g = group
    # |1|+|-2|+|3| = 6 ; |0|+|0.5|+|-1| = 1.5  (up columns ignored)
    torch.testing.assert_close(l1_down(g, ScoreStats()), torch.tensor([6.0, 1.5]))


def test_coupled_l1_is_down_row_plus_up_column(group):
    _, g = group
    # column 0 of W_up: 1 + 1 + 0.5 = 2.5 ; column 1: 0 + 2 + 0.5 = 2.5
    torch.testing.assert_close(coupled_l1(g, ScoreStats()), torch.tensor([8.5, 4.0]))


def test_tina_is_eq2_scaled_by_n_plus_m(group):
    _, g = group
    assert (g.width, g.fan) == (2, 3)
    torch.testing.assert_close(tina(g, ScoreStats()), torch.tensor([8.5 / 5, 4.0 / 5]))


def test_scaled_with_terms_normaliser_and_custom(group):
    _, g = group
    torch.testing.assert_close(scaled(coupled_l1, "terms")(g, ScoreStats()), torch.tensor([8.5 / 6, 4.0 / 6]))
    torch.testing.assert_close(scaled(l1_down, lambda grp: 2.0)(g, ScoreStats()), torch.tensor([3.0, 0.75]))
    torch.testing.assert_close(scaled(coupled_l1)(g, ScoreStats()), tina(g, ScoreStats()))
    with pytest.raises(PrunekitError, match=r"unknown 'n\+mm'"):
        scaled(coupled_l1, "n+mm")


def test_combine_is_a_weighted_sum(group):
    _, g = group
    torch.testing.assert_close(combine(l1_down, coupled_l1, weights=[2.0, -1.0])(g, ScoreStats()),
                               torch.tensor([12.0 - 8.5, 3.0 - 4.0]))


def test_l1_activation_is_mean_abs_gelu_output_over_all_batches(group):
    model, g = group
    batches = [torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]), torch.tensor([[[-1.0, 1.0, 1.0]]])]

    def gelu(v):
        return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))

    rows = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [-1.0, 1.0, 1.0]]
    expected = []
    for w, b in zip(DOWN, [0.5, -0.25]):
        pre = [sum(wk * xk for wk, xk in zip(w, x)) + b for x in rows]
        expected.append(sum(abs(gelu(p)) for p in pre) / len(rows))
    acts = collect_activations(model, [g], batches)
    torch.testing.assert_close(acts[g.name], torch.tensor(expected))
    torch.testing.assert_close(l1_activation(g, ScoreStats(activations=acts)), torch.tensor(expected))
    assert needs_activations(l1_activation) and needs_activations(scaled(l1_activation))
    assert not needs_activations(tina)
    # hooks are gone: a forward after calibration records nothing more
    assert not model.attn.adapter.act._forward_hooks


def test_collect_activations_removes_hooks_on_error(group):
    model, g = group
    with pytest.raises(RuntimeError):
        collect_activations(model, [g], [torch.zeros(1, 7)])  # wrong width
    assert not model.attn.adapter.act._forward_hooks


def test_l1_activation_without_calibration_says_what_to_do(group):
    _, g = group
    with pytest.raises(PrunekitError, match="calibration"):
        l1_activation(g, ScoreStats())


def test_random_is_seeded(group):
    _, g = group
    a = random_score(g, ScoreStats(generator=torch.Generator().manual_seed(3)))
    b = random_score(g, ScoreStats(generator=torch.Generator().manual_seed(3)))
    assert a.shape == (2,) and torch.equal(a, b)


def test_registry_names_and_did_you_mean():
    assert {"l1_down", "l1_activation", "l1", "tina", "random"} <= set(SCORERS.names())
    assert "coupled_l1" not in SCORERS.names() and SCORERS.get("l1") is coupled_l1  # one name a scorer
    with pytest.raises(UnknownNameError, match="did you mean 'tina'"):
        get_scorer("tinaa")
    own = lambda grp, stats: torch.ones(grp.width)  # noqa: E731
    assert get_scorer(own) is own


def test_score_groups_checks_the_shape(group):
    _, g = group
    with pytest.raises(PrunekitError, match=r"expected a tensor of shape \(2,\)"):
        score_groups([g], lambda grp, stats: torch.ones(3))
    with pytest.raises(PrunekitError, match="non-finite"):
        score_groups([g], lambda grp, stats: torch.tensor([1.0, float("nan")]))
