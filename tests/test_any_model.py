"""One ``prune()`` call on the families people bring beyond timm classifiers (tests/any_models.py): Hugging Face
encoders, decoders with and without grouped-query attention, HF vision transformers, torchvision Swin / MNASNet,
segmentation models and a U-Net. Each: the forward works, its output keeps its structure and shapes, the parameters
removed are the budget's within its tolerance, decoders still generate, and ``load_pruned`` in a fresh process gives
the same outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import prunekit as pk
from prunekit.core.outputs import output_tensors

sys.path.insert(0, str(Path(__file__).parent))
from any_models import MODELS, SEQ, build  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

RATIO = 0.3


def call(model, x):
    with torch.no_grad():
        return model(**x) if isinstance(x, dict) else model(x)


def structure(out):
    """Types, keys and shapes of what a model returned (a ModelOutput's fields, a dict's keys, nested lists)."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return type(out).__name__, {k: structure(v) for k, v in out.items() if v is not None and (
            isinstance(v, (torch.Tensor, dict, list, tuple)))}
    if isinstance(out, (list, tuple)):
        return type(out).__name__, [structure(v) for v in out]
    return type(out).__name__


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Every model pruned once (l1_mean: heads and neurons compete within their layers), saved with its outputs."""
    root = tmp_path_factory.mktemp("any")
    done = {}
    for name in MODELS:
        model, x = build(name)
        before = call(model, x)
        plan = pk.prune(model, x, ratio=RATIO, target="params", scorer="l1_mean")
        after = call(model, x)
        pk.save_pruned(model, root / name)
        save_file({f"out{i}": t.contiguous() for i, t in enumerate(output_tensors(after))},
                  str(root / name / "outputs.safetensors"))
        done[name] = (model, x, plan, before, after)
    return root, done


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_model_keeps_its_output_structure_and_meets_the_budget(pruned, name):
    _, done = pruned
    model, x, plan, before, after = done[name]
    assert structure(after) == structure(before)
    assert all(torch.isfinite(t).all() for t in output_tensors(after))
    meta = plan.meta
    removed = meta["params_before"] - meta["params_after"]
    assert removed > 0
    assert abs(removed - meta["budget"]["goal"]) <= meta["budget"]["tolerance"] + 1e-6 * meta["budget"]["goal"]
    assert sum(p.numel() for p in model.parameters()) == meta["params_after"]


@pytest.mark.parametrize("name", [n for n, (_, _, family) in MODELS.items() if family == "decoder"])
def test_a_pruned_decoder_still_generates_with_its_cache(pruned, name):
    _, done = pruned
    model, x = done[name][:2]
    ids = x["input_ids"][:1]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
    assert out.shape == (1, SEQ + 4)
    with torch.no_grad():  # the cached path computes what a full forward over the same tokens computes
        full = model(out[:, :-1], use_cache=False).logits[:, -1]
        step = model(out[:, :-2], use_cache=True)
        cached = model(out[:, -2:-1], cache=step.cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


def test_heads_and_neurons_are_pruned_somewhere_in_each_transformer_family(pruned):
    _, done = pruned
    kinds = {}
    for name, (_, _, plan, _, _) in done.items():
        family = MODELS[name][2]
        for group, idxs in plan.remove.items():
            if idxs:
                kinds.setdefault(family, set()).add("head" if group.endswith(".heads") else "channel")
    for family in ("encoder", "decoder", "vision"):
        assert kinds[family] == {"head", "channel"}, (family, kinds[family])


RELOAD = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from safetensors.torch import load_file
from any_models import build
import prunekit as pk
from prunekit.core.outputs import output_tensors
for name in {names!r}:
    model, x = build(name)
    pk.load_pruned({root!r} + "/" + name, model)
    with torch.no_grad():
        out = output_tensors(model(**x) if isinstance(x, dict) else model(x))
    ref = load_file({root!r} + "/" + name + "/outputs.safetensors")
    assert len(out) == len(ref), (name, len(out), len(ref))
    for i, t in enumerate(out):
        torch.testing.assert_close(t, ref[f"out{{i}}"], rtol=1e-4, atol=1e-4, msg=name)
    print(json.dumps([name, sum(p.numel() for p in model.parameters())]))
"""


def test_every_pruned_model_reloads_in_a_fresh_process(pruned):
    root, done = pruned
    code = RELOAD.format(tests=str(Path(__file__).parent), names=list(MODELS), root=str(root))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    params = dict(json.loads(line) for line in res.stdout.splitlines() if line.startswith("["))
    assert params == {name: done[name][2].meta["params_after"] for name in MODELS}
