"""Uniform pruning: families of repeated blocks (and constructor ties) move in lockstep; each member drops its own
lowest-scored units; the budget is met within one family step."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

import prunekit as pk
from prunekit import Budget
from prunekit.budget.selection import select_plan
from prunekit.budget.uniform import families
from prunekit.ranking.scopes import global_scope
from prunekit.ranking.scorers import coupled_l1

sys.path.insert(0, str(Path(__file__).parent))
import any_models  # noqa: E402


class FakeGroup:
    policy = None

    def __init__(self, name: str, width: int, kind: str = "neuron"):
        self.name, self.width, self.kind = name, width, kind


def test_families_tie_repeated_blocks_of_one_kind_and_width():
    groups = [FakeGroup("blocks.0.mlp.fc1", 8), FakeGroup("blocks.1.mlp.fc1", 8), FakeGroup("blocks.2.mlp.fc1", 6),
              FakeGroup("blocks.0.attn", 4, "head"), FakeGroup("blocks.1.attn", 4, "head"), FakeGroup("stem", 8)]
    fams = {f.name: [n for n, _ in f.members] for f in families(None, groups)}
    assert fams == {"blocks.*.mlp.fc1": ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"],  # fc1 keeps its number
                    "blocks.2.mlp.fc1": ["blocks.2.mlp.fc1"],  # another width: not the same block
                    "blocks.*.attn": ["blocks.0.attn", "blocks.1.attn"], "stem": ["stem"]}
    twice = [FakeGroup(f"s.{i}.b.{j}.fc", 4 * (i + 1)) for i in range(2) for j in range(2)]
    assert sorted(f.name for f in families(None, twice)) == ["s.*.b.*.fc (width 4)", "s.*.b.*.fc (width 8)"]


def test_each_member_drops_its_own_lowest_units_ranked_by_rank_position():
    """Unit j of block 0 and unit j of block 1 are unrelated: steps rank the members' t-th lowest units."""
    groups = [FakeGroup("blocks.0.fc", 4), FakeGroup("blocks.1.fc", 4), FakeGroup("head", 4)]
    scores = {"blocks.0.fc": torch.tensor([1.0, 9.0, 9.0, 2.0]), "blocks.1.fc": torch.tensor([9.0, 1.0, 2.0, 9.0]),
              "head": torch.tensor([1.5, 8.0, 8.0, 8.0])}
    fams = families(None, groups)
    # steps by mean score: blocks step 0 (1.0, 2 units), head 0 (1.5, 1 unit), blocks step 1 (2.0, 2 units) = 5 units
    plan, done, tol = select_plan(Budget.channels(0.5), groups, scores, global_scope, 5.0, families=fams)
    assert plan.remove == {"blocks.0.fc": [0, 3], "blocks.1.fc": [1, 2], "head": [0]}
    assert done == 5 and tol == 2  # one step of the two-block family
    widths = plan.widths_after()
    assert widths["blocks.0.fc"] == widths["blocks.1.fc"] == 2
    # summing by index would have kept blocks.0's unit 0 (score 1) for blocks.1's 9 at the same index
    assert plan.meta["uniform"] == {"blocks.*.fc": {"members": ["blocks.0.fc", "blocks.1.fc"], "units": [1, 1],
                                                    "steps": 4}}


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10).eval()


def test_prune_uniform_keeps_every_block_alike_and_meets_the_budget():
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    plan = pk.prune(model, x[:1], ratio=0.3, uniform=True)
    assert len({b.mlp.fc1.out_features for b in model.blocks}) == 1
    assert len({b.attn.num_heads for b in model.blocks}) == 1
    assert model.blocks[0].mlp.fc1.out_features < 768
    b = plan.meta["budget"]
    assert abs(b["reached"] * plan.meta["params_before"] - b["goal"]) <= b["tolerance"]
    assert "blocks.*.mlp.fc1" in plan.meta["uniform"]
    assert model(x).shape == (2, 10)


def heads_first(group, stats):
    """Heads (and the residual stream) score lowest: a test scorer that makes the tied ViT step go first."""
    s = coupled_l1(group, stats)
    return s * 0 if group.kind == "head" or group.name == "patch_embed.proj" else s + 1e6


def test_vit_heads_go_with_head_dim_channels_of_the_stream():
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    plan = pk.prune(model, x[:1], ratio=0.5, uniform=True, scorer=heads_first)
    assert {b.attn.num_heads for b in model.blocks} == {2}
    assert model.patch_embed.proj.out_channels == 2 * model.blocks[0].attn.head_dim == 128
    assert plan.meta["uniform"]["patch_embed.proj (tied)"]["units"][0] == 64


def test_convnext_mlps_stay_four_times_their_stage_width():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10).eval()
    pk.prune(model, torch.randn(1, 3, 64, 64), ratio=0.3, uniform=True)
    for stage in model.stages:
        dim = stage.blocks[0].conv_dw.out_channels
        assert {b.mlp.fc1.weight.shape[0] for b in stage.blocks} == {4 * dim}


def test_a_transformers_models_lone_groups_keep_their_width():
    model, x = any_models.build("bert")
    plan = pk.prune(model.eval(), x, ratio=0.3, uniform=True)
    assert model.bert.pooler.dense.out_features == model.config.hidden_size
    assert plan.meta["uniform"]["kept (no config field)"] == ["bert.pooler.dense"]
    assert {layer.intermediate.dense.out_features for layer in model.bert.encoder.layer} == \
        {model.config.intermediate_size} and model.config.intermediate_size < 128


def test_engine_prunes_uniformly_from_backbone_groups():
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    engine = pk.Engine(model, lambda m, opt, cycle: {}, example_inputs=x[:1], scorer="l1",
                       budget=Budget.params(0.3), rho=0.5, groups_fn=pk.backbone_groups(uniform=True))
    assert engine.uniform
    engine.run()
    widths = {b.mlp.fc1.out_features for b in model.blocks}
    assert len(widths) == 1 and widths.pop() < 768
    assert all("uniform" in p.meta for p in engine.plans)


def test_uniform_capacity_is_the_most_constrained_member():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    with pytest.raises(pk.UnreachableTargetError, match="at most"):
        pk.prune(model, x, ratio=0.9, uniform=True, ignore=["patch_embed.proj"])
    assert all(b.mlp.fc1.out_features == 768 for b in model.blocks)


def test_a_recipe_asks_for_uniform_backbone_pruning(tmp_path):
    from prunekit.recipe.spec import load_recipe
    from prunekit.run.prune import recipe_groups_fn
    from test_cli import tiny_recipe

    path = tiny_recipe(tmp_path, method={"name": "full"},
                       strategy={"groups": "backbone", "budget": {"params": 0.3}, "backbone": {"uniform": True}})
    groups_fn = recipe_groups_fn(load_recipe(path))
    assert groups_fn.uniform and groups_fn.group_source[1]["uniform"] is True
    with pytest.raises(pk.ConfigError, match="strategy.backbone.uniform"):
        bad = tiny_recipe(tmp_path, name="bad", strategy={"groups": "backbone", "backbone": {"uniform": "yes"}})
        load_recipe(bad)
