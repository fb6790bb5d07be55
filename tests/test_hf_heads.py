"""Attention heads and MLP neurons of Hugging Face transformers models (prunekit.groups.heads.hf): a removed unit whose
weights are zero changes nothing, grouped-query attention loses a key/value head with its query heads, and the
model's config follows where every layer agrees."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.core.plan import Plan
from prunekit.groups.heads.slicing import tensor_at

sys.path.insert(0, str(Path(__file__).parent))
from any_models import build  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def logits(model, x):
    with torch.no_grad():
        return (model(**x) if isinstance(x, dict) else model(x)).logits


def _zero_columns(group, unit: int) -> None:
    """Zero what reads ``unit`` (the output projection's columns of that head or key/value group)."""
    with torch.no_grad():
        for s in group.layout.slices:
            if s.role != "column":
                continue
            t = tensor_at(group.module, s.path)
            block = t.shape[s.dim] // group.width
            t.narrow(s.dim, unit * block, block).zero_()


@pytest.mark.parametrize("name", ["bert", "roberta", "llama_gqa", "llama_mha", "qwen2_gqa", "gpt2", "hf_vit",
                                  "hf_dinov2"])
def test_removing_a_head_that_reads_nothing_leaves_the_logits_unchanged(name):
    model, x = build(name)
    groups = pk.head_groups(model)
    assert len(groups) == 2 and all(g.width >= 2 for g in groups)
    for g in groups:
        _zero_columns(g, 1)
    before = logits(model, x)
    widths = [g.width for g in groups]
    for g in groups:
        g.prune([1])
    assert [g.width for g in groups] == [w - 1 for w in widths]
    torch.testing.assert_close(logits(model, x), before, rtol=1e-5, atol=1e-5)


def test_a_grouped_query_unit_is_a_key_value_head_with_its_query_heads():
    model, x = build("llama_gqa")  # 4 query heads, 2 key/value heads, head_dim 16: G = 2
    attn = model.model.layers[0].self_attn
    group = next(g for g in pk.head_groups(model) if g.module is attn)
    assert group.width == 2 and attn.num_key_value_groups == 2
    q_rows = attn.q_proj.weight[32:64].clone()  # query heads 2, 3 read kv head 1
    group.prune([0])
    assert attn.k_proj.weight.shape == (16, 64) and attn.v_proj.weight.shape == (16, 64)
    assert attn.q_proj.weight.shape == (32, 64) and attn.o_proj.weight.shape == (64, 32)
    torch.testing.assert_close(attn.q_proj.weight, q_rows)
    assert attn.num_key_value_groups == 2  # repeat_kv unchanged
    assert logits(model, x).shape == (2, 8, 96)


def test_zero_neurons_of_a_decoder_mlp_go_without_changing_the_logits():
    model, x = build("llama_gqa")
    source = pk.backbone_groups(verify=False)
    groups = {g.name: g for g in source(model, x)}
    mlp = [n for n in groups if n.endswith("mlp.gate_proj")]
    assert len(mlp) == 2, sorted(groups)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, :10] = 0
    before = logits(model, x)
    Plan(widths={n: groups[n].width for n in mlp}, remove={n: list(range(10)) for n in mlp}).apply(model, groups)
    assert model.model.layers[0].mlp.up_proj.out_features == 118
    torch.testing.assert_close(logits(model, x), before, rtol=1e-5, atol=1e-5)
    assert "model.layers.0.self_attn.q_proj" in source.excluded  # per-head channels are never neurons
    assert "embeddings=True" in " ".join(source.excluded.values())  # the hidden size stays unless asked


def test_the_config_follows_uniform_widths_and_the_model_reloads_with_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    model, x = build("llama_gqa")
    groups = {g.name: g for g in pk.backbone_groups(verify=False)(model, x)}
    heads = [n for n in groups if n.endswith(".heads")]
    mlp = [n for n in groups if n.endswith("mlp.gate_proj")]
    Plan(widths={n: groups[n].width for n in heads[:1]}, remove={heads[0]: [1]}).apply(model, groups)
    assert model.config.num_key_value_heads == 2  # the layers differ: the config keeps its widths
    Plan(widths={n: groups[n].width for n in heads[1:] + mlp},
         remove={heads[1]: [0], **{n: list(range(0, 128, 2)) for n in mlp}}).apply(model, groups)
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size) == \
        (2, 1, 16, 64)
    before = logits(model, x)
    model.save_pretrained(tmp_path / "hf")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(logits(again, x), before, rtol=1e-5, atol=1e-5)
    out = model.generate(x["input_ids"][:1], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 11)


@pytest.mark.parametrize("name", ["bert", "llama_gqa"])
def test_the_hidden_size_is_pruned_only_when_asked_for(name):
    model, x = build(name)
    assert not any(g.name.endswith("o_proj") or g.name.endswith("attention.output.dense")
                   for g in pk.backbone_groups(verify=False)(model, x))
    groups = {g.name: g for g in pk.BackboneGroups(embeddings=True, verify=False)(model, x)}
    hidden = next(n for n, g in groups.items() if any(isinstance(m.module, torch.nn.Embedding)
                                                       for m in getattr(g, "members", [])))
    shape = logits(model, x).shape
    Plan(widths={hidden: groups[hidden].width}, remove={hidden: [0, 1, 2, 3]}).apply(model, groups)
    assert model.get_input_embeddings().embedding_dim == 60 and logits(model, x).shape == shape


def test_prune_passes_embeddings_and_the_discovery_budget_on():
    model, x = build("bert")
    plan = pk.prune(model, x, ratio=0.3, target="params", embeddings=True)
    assert not any("embeddings=True" in r for r in plan.meta["excluded"].values())
    model, x = build("bert")
    plan = pk.prune(model, x, ratio=0.05, target="params", discovery=pk.DiscoveryBudget(max_pairs=300))
    stopped = [n for n, r in plan.meta["excluded"].items() if "discovery budget" in r]
    assert "bert.encoder.layer.0.intermediate.dense" in stopped  # 128 neurons x 2 layers pass 300 pairs
