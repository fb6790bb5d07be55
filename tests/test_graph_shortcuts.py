"""The shortcuts :mod:`prunekit.core.graph` takes around torch-pruning's graph walk give torch-pruning's own answers.

- Finding groups computes torch-pruning's index mappings once per trace (``frozen_index_mapping``), not on every
  ``get_pruning_group`` call: the groups are the same, and graphs prunekit did not build keep torch-pruning's behaviour.
- In a graph without concatenations or splits, a group is pruned through its full-width torch-pruning group cut down
  to the chosen channels instead of a new walk: the pruned model is the same, weight for weight.
- GhostNet's stem (units tied through a concatenation) costs the same per unit, so budgets count it exactly.
"""
from __future__ import annotations

import contextlib
import copy
import random

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

import prunekit as pk
import prunekit.core.graph as graph
import prunekit.core.tpcompat as tpcompat
from prunekit.budget.search import CostModel, count_parameters
from prunekit.groups.channels import backbone_groups
from prunekit.core.plan import Plan

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoBranchCat(nn.Module):
    """conv a and conv b concatenated into one consumer: pruning a moves b's indices in the consumer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.head = nn.Conv2d(9, 6, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


def _signature(groups):
    return [(g.name, g.width, g.channel_groups, g.exact, [(m.name, m.role, m.idxs, m.root_idxs) for m in g.members],
             [(s.attr, s.dim, s.size) for s in g.slices]) for g in groups]


def _random_plan(groups, seed):
    rnd = random.Random(seed)
    remove = {g.name: sorted(rnd.sample(range(g.width), rnd.randint(1, g.width - 1)))
              for g in groups if g.width > 1 and rnd.random() < 0.7}
    return Plan(remove=remove, widths={g.name: g.width for g in groups})


@pytest.mark.parametrize("name", ["ghostnet_050", "densenet121"])
def test_groups_found_with_one_index_mapping_equal_a_fresh_mapping_per_call(name, monkeypatch):
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    frozen = _signature(backbone_groups(verify=False)(model, x))
    monkeypatch.setattr(graph, "frozen_index_mapping", lambda dg: contextlib.nullcontext(dg))
    fresh = _signature(backbone_groups(verify=False)(model, x))
    assert frozen == fresh and len(frozen) > 20


def test_graphs_prunekit_did_not_build_keep_torch_pruning_index_mapping():
    model = TwoBranchCat().eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    dg.get_pruning_group(model.a, tp.prune_conv_out_channels, [0]).prune()  # head's inputs: a's 3, then b's 5
    items = dg.get_pruning_group(model.b, tp.prune_conv_out_channels, [0]).items
    head = [i for i in items if i.dep.target.module is model.head]
    assert [list(i.idxs) for i in head] == [[3]]  # recomputed after the prune: b's channel 0 moved from 4 to 3
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 6, 8, 8)


def test_a_concatenation_disables_the_cut_and_pruning_stays_correct():
    model = TwoBranchCat().eval()
    x = torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(model)
    groups = {g.name: g for g in pk.find_groups(model, x[:1])}
    assert all(g._every is None for g in groups.values())  # the walk: indices move when another branch is pruned
    groups["a"].prune([0, 2])
    groups["b"].prune([1])
    keep_a, keep_b = [1, 3], [0, 2, 3, 4]
    assert torch.equal(model.head.weight, reference.head.weight[:, keep_a + [4 + k for k in keep_b]])
    assert model(x).shape == (2, 6, 8, 8)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_050", "convnext_atto"])
def test_cut_groups_prune_exactly_like_torch_pruning_walk(name):
    base = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    fn = backbone_groups(verify=False)
    for seed in range(2):
        cut_model, walk_model = copy.deepcopy(base), copy.deepcopy(base)
        cut, walk = fn(cut_model, x), fn(walk_model, x)
        assert all(g._every is not None for g in cut if isinstance(g, graph.Group))
        for g in walk:
            if isinstance(g, graph.Group):
                g._every = None  # torch-pruning walks the graph again for the chosen channels
        plan = _random_plan(cut, seed)
        Plan.from_dict(plan.to_dict()).apply(cut_model, cut)
        Plan.from_dict(plan.to_dict()).apply(walk_model, walk)
        a, b = cut_model.state_dict(), walk_model.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        with torch.no_grad():
            assert torch.equal(cut_model(x), walk_model(x))


def test_a_group_pruned_twice_walks_the_graph_the_second_time():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    g = next(g for g in pk.find_groups(model, x) if g.name == "layer1.0.conv1")
    g.prune([0, 1])
    assert g._every is None and model.layer1[0].conv1.out_channels == 62
    g.prune([0])  # the cut would be stale now: torch-pruning's walk on the pruned graph
    assert model.layer1[0].conv1.out_channels == 61 and model.layer1[0].conv2.in_channels == 61
    assert model(x).shape == (1, 10)


def test_ghostnet_stem_units_cost_the_same_and_budgets_count_them_exactly():
    base = timm.create_model("ghostnet_050", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    model = copy.deepcopy(base)
    groups = backbone_groups(verify=False)(model, x)
    stem = next(g for g in groups if g.name == "conv_stem")
    assert (stem.width, stem.channel_groups, stem.exact) == (4, 2, True)  # 4 units of 2 channels, through a concat
    plan = _random_plan(groups, 0)
    predicted = CostModel(groups).removed({k: len(v) for k, v in plan.remove.items()})
    before = count_parameters(model)
    plan.apply(model, groups)
    assert predicted == before - count_parameters(model)


def test_index_mappings_are_computed_once_a_block_and_torch_pruning_is_never_patched(monkeypatch):
    """Outside a block every walk recomputes torch-pruning's index mappings (a prune may have moved them); inside one,
    the block's entry computes them for every walk; torch-pruning's function is never replaced by prunekit."""
    from torch_pruning.dependency import index_mapping

    from prunekit.core.walk import pruning_group

    original = index_mapping.update_index_mapping
    calls = []
    monkeypatch.setattr(index_mapping, "update_index_mapping", lambda g: (calls.append(g), original(g)))
    counting = index_mapping.update_index_mapping
    model = timm.create_model("resnet18", num_classes=4).eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    calls.clear()
    fn = tp.prune_conv_out_channels
    pruning_group(dg, model.conv1, fn, [0])
    pruning_group(dg, model.conv1, fn, [1])
    assert len(calls) == 2
    with tpcompat.frozen_index_mapping(dg):
        with tpcompat.frozen_index_mapping(dg):  # nested: the outer block's computation serves
            for i in range(5):
                pruning_group(dg, model.conv1, fn, [i])
    assert len(calls) == 3
    backbone_groups()(model, torch.randn(1, 3, 32, 32))
    assert index_mapping.update_index_mapping is counting
