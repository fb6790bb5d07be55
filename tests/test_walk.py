"""prunekit's walk of the traced graph (prunekit.core.walk): torch-pruning's groups, found within a budget."""
from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest
import timm
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import prunekit as pk

from prunekit.core.graph import trace
from prunekit.core.tpcompat import frozen_index_mapping
from prunekit.core.walk import DiscoveryBudget, DiscoveryBudgetError, pruning_group
from prunekit.groups.channels import backbone_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _as_sets(group):
    return {(id(i.dep.target), i.dep.handler): (sorted(i.idxs), sorted(zip(i.idxs, i.root_idxs))) for i in group.items}


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "ghostnet_050", "mobilenetv3_small_050",
                                  "vit_tiny_patch16_224", "convnext_atto"])
def test_the_walk_finds_torch_prunings_groups(name):
    """Same layers, handlers, channels and root channels as ``DependencyGraph.get_pruning_group``, for every root."""
    kwargs = dict(img_size=32) if name.startswith("vit") else {}
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    roots = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m in dg.module2node]
    assert len(roots) > 5
    for m in roots:
        fn = dg.get_pruner_of_module(m).prune_out_channels
        every = list(range(dg.get_out_channels(m)))
        theirs, ours = dg.get_pruning_group(m, fn, every), pruning_group(dg, m, fn, every)
        assert _as_sets(ours) == _as_sets(theirs), name
        assert [id(i.dep.target) for i in ours.items][0] == id(dg.module2node[m])


def _swin():
    torch.manual_seed(0)
    return torchvision.models.swin_t(num_classes=10).eval(), torch.randn(1, 3, 64, 64)


def test_a_small_budget_stops_a_walk_that_reaches_too_many_channels():
    model = timm.create_model("resnet18", num_classes=5).eval()
    traced = trace(model, torch.randn(1, 3, 32, 32))
    fn = traced.dg.get_pruner_of_module(model.conv1).prune_out_channels
    with pytest.raises(DiscoveryBudgetError, match=r"the group of conv1's channels did not close .* max_pairs=100,"):
        pruning_group(traced.dg, model.conv1, fn, list(range(64)), budget=DiscoveryBudget(max_pairs=100))
    assert len(pruning_group(traced.dg, model.conv1, fn, list(range(64))).items) > 10  # the default budget: found


@pytest.mark.integration
def test_a_walk_past_its_budget_stops_in_time_names_the_root_and_changes_nothing():
    """torchvision Swin's last residual stream, a walk that does not close: prunekit's stops within its budget."""
    model, x = _swin()
    traced = trace(model, x)
    root = model.features[6].reduction
    fn = traced.dg.get_pruner_of_module(root).prune_out_channels
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = DiscoveryBudget(max_pairs=200_000, max_seconds=5.0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with frozen_index_mapping(traced.dg), pytest.raises(DiscoveryBudgetError) as err:
        pruning_group(traced.dg, root, fn, list(range(root.out_features)), budget=budget, names=traced.names)
    elapsed = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert elapsed < budget.max_seconds + 1.0, elapsed
    assert grown_mb < 500, grown_mb
    assert err.value.root == "features.6.reduction"
    assert "ignore=['features.6.reduction']" in str(err.value) and "max_pairs=200,000" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.integration
def test_groups_past_the_budget_are_left_out_by_name_and_the_rest_are_found():
    model, x = _swin()
    source = backbone_groups(verify=False)
    groups = source(model, x)
    names = {g.name for g in groups}
    assert {"features.1.0.mlp.0", "features.5.5.mlp.0", "features.2.reduction"} <= names
    stopped = {n: r for n, r in source.excluded.items() if "discovery budget" in r}
    assert "features.6.reduction" in stopped and "features.6.reduction" not in names
    # the layers a stopped walk reached are in that group: none of them roots another walk or group
    assert not any(n.startswith("features.7.0.mlp.3") for n in names)


def test_budget_fields_are_checked():
    with pytest.raises(pk.PrunekitError, match=r"discovery: expected a prunekit.DiscoveryBudget.*got \{'max_pairs'"):
        backbone_groups(discovery={"max_pairs": 5})
    with pytest.raises(ValueError, match="max_pairs: expected a positive int, got 0"):
        DiscoveryBudget(max_pairs=0)
    with pytest.raises(ValueError, match="max_seconds: expected a positive number, got -1"):
        DiscoveryBudget(max_seconds=-1)


SWIN_PRUNE = """
import time, torch, torchvision
import prunekit as pk
torch.manual_seed(0)
model, x = torchvision.models.swin_t(num_classes=10).eval(), torch.randn(2, 3, 64, 64)
with torch.no_grad():
    ref = model(x)
start = time.perf_counter()
plan = pk.prune(model, x[:1], ratio=0.4, target="params")
elapsed = time.perf_counter() - start
with torch.no_grad():
    out = model(x)
assert out.shape == ref.shape and torch.isfinite(out).all()
print(round(elapsed, 1), round(plan.meta["reached"], 4), len(plan.remove))
"""


@pytest.mark.integration
def test_torchvision_swin_t_is_pruned_in_a_fresh_process_within_a_minute():
    res = subprocess.run([sys.executable, "-c", SWIN_PRUNE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    elapsed, reached, groups = res.stdout.split()
    assert float(elapsed) < 60, elapsed
    assert abs(float(reached) - 0.4) < 0.01 and int(groups) > 0
