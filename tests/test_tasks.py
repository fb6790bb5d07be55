"""Many tasks, one backbone (prunekit.tasks): a mixed-task batch equals every sample through its own task's model.

Tasks are built here from random adapter weights of different widths (an absent position = an emptied adapter), on a
ViT (tokens), a Swin (window attention sees B x windows rows) and a ResNet (1x1-conv adapters, channels first),
series and parallel; the single-task reference is the backbone with those adapters injected as prunekit injects
them. Real trained runs (load_tasks, the refusals) are tests/test_task_runs.py.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from prunekit.adapters.layers import Adapter, Conv1x1, ParallelAdapterLayer, SeriesAdapterLayer
from prunekit.core.wrapper import set_submodule
from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.tasks.model import MultiTaskModel, TaskExistsError
from prunekit.tasks.source import BackboneId, TaskAdapter, TaskRun

from conftest import tiny_swin, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

SAME = BackboneId("m", "{}", 16, 3, (0.5,), (0.5,), "sha256:0 (a.safetensors)")


def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=4).eval()


# (backbone, positions -> (dim, layout), head name, features)
MODELS = {
    "vit": (lambda: tiny_vit(num_classes=4).eval(), {"blocks.0.attn": (32, "channels_last"),
                                                     "blocks.0.mlp": (32, "channels_last"),
                                                     "blocks.1.mlp": (32, "channels_last")}, "head", 32),
    "swin": (lambda: tiny_swin(num_classes=4).eval(), {"layers.0.blocks.0.attn": (16, "channels_last"),
                                                       "layers.1.blocks.0.mlp": (32, "channels_last")}, "head.fc", 32),
    "resnet": (resnet, {"layer1.0": (64, "channels_first"), "layer3.1": (256, "channels_first")}, "fc", 512),
}


def task(seed: int, positions: dict, widths: list[int], classes: int, features: int, kind: str = "series",
         act: str = "gelu", scale: float = 1.0, head_name: str = "head") -> TaskRun:
    """Random adapters of ``widths`` at ``positions`` (0: absent, as an emptied adapter) and a random head."""
    g = torch.Generator().manual_seed(seed)
    adapters = {}
    for (p, (m, layout)), n in zip(positions.items(), widths):
        if n:
            adapters[p] = TaskAdapter(kind, act, scale, layout, torch.randn(n, m, generator=g) * 0.3,
                                      torch.randn(n, generator=g) * 0.1, torch.randn(m, n, generator=g) * 0.3,
                                      torch.randn(m, generator=g) * 0.1)
    head = {"weight": torch.randn(classes, features, generator=g) * 0.1, "bias": torch.randn(classes, generator=g)}
    return TaskRun(Path(f"runs/t{seed}"), None, 0, [f"c{seed}_{k}" for k in range(classes)], adapters, head_name,
                   head, SAME)


def single_task_model(backbone: nn.Module, run: TaskRun) -> nn.Module:
    """The backbone with ``run``'s adapters injected (Adapter + its wrapper) and its head: one task's model."""
    model = copy.deepcopy(backbone)
    for p, a in run.adapters.items():
        layer = Conv1x1 if a.layout == "channels_first" else nn.Linear
        adapter = Adapter(a.dim, a.width, act_layer=a.act, residual=a.kind == "series", scale=a.scale,
                          linear_layer=layer)
        shape = (lambda w: w[:, :, None, None]) if a.layout == "channels_first" else (lambda w: w)
        with torch.no_grad():
            adapter.down.weight.copy_(shape(a.down_weight))
            adapter.down.bias.copy_(a.down_bias)
            adapter.up.weight.copy_(shape(a.up_weight))
            adapter.up.bias.copy_(a.up_bias)
        wrapper = SeriesAdapterLayer if a.kind == "series" else ParallelAdapterLayer
        set_submodule(model, p, wrapper(model.get_submodule(p), adapter))
    head = nn.Linear(run.head["weight"].shape[1], run.num_classes)
    head.weight.data.copy_(run.head["weight"])
    head.bias.data.copy_(run.head["bias"])
    set_submodule(model, run.head_name, head)
    return model.eval()


def three_tasks(name: str, kind: str = "series"):
    build, positions, head_name, features = MODELS[name]
    k = len(positions)
    specs = [([8] * k, 4), ([3, 0] + [1] * (k - 2), 3), ([0] * (k - 1) + [2], 6)]  # full / narrow / mostly emptied
    runs = [task(i, positions, w, c, features, kind, "relu" if kind == "parallel" else "gelu",
                 0.5 if kind == "parallel" else 1.0, head_name) for i, (w, c) in enumerate(specs)]
    return build(), runs


def multi(backbone, runs) -> MultiTaskModel:
    model = MultiTaskModel(copy.deepcopy(backbone), runs[0], "t0")
    for i, r in enumerate(runs[1:], 1):
        model.add_task(r, name=f"t{i}")
    return model.eval()


@pytest.mark.parametrize("name,kind", [("vit", "series"), ("vit", "parallel"), ("swin", "series"),
                                       ("resnet", "series")])
def test_a_mixed_batch_equals_each_sample_through_its_own_task(name, kind):
    backbone, runs = three_tasks(name, kind)
    model = multi(backbone, runs)
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(3)) if name != "resnet" else \
        torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tasks = ["t0", "t2", "t1", "t1", "t0", "t2", "t2"]
    singles = [single_task_model(backbone, r) for r in runs]
    with torch.no_grad():
        out = model(x, tasks=tasks)
        for b, t in enumerate(tasks):
            ref = singles[int(t[1])](x[b:b + 1])[0]
            assert out[b].shape == ref.shape == (runs[int(t[1])].num_classes,)
            torch.testing.assert_close(out[b], ref, rtol=1e-5, atol=1e-5)
            assert torch.isinf(out.padded[b, ref.shape[0]:]).all()  # past its own classes: -inf
        for i, single in enumerate(singles):  # one task for the whole batch: a plain tensor, the task's model
            torch.testing.assert_close(model(x, tasks=f"t{i}"), single(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.task(f"t{i}")(x), single(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())


def test_top_k_names_each_samples_own_classes():
    backbone, runs = three_tasks("vit")
    model = multi(backbone, runs)
    with torch.no_grad():
        out = model(torch.randn(3, 3, 16, 16), tasks=["t1", "t0", "t2"])
    top = out.top_k(5)
    assert [len(t) for t in top] == [3, 4, 5]  # at most the task's classes
    assert all(name.startswith(f"c{task[1]}_") for task, row in zip(out.tasks, top) for _, name, _ in row)
    assert all(abs(sum(p for *_, p in row) - 1) < 1e-5 for row in top[:2])  # every class of t1 / t0: sums to 1


def test_adding_and_removing_a_task_leaves_the_others_unchanged():
    backbone, runs = three_tasks("vit")
    model = multi(backbone, runs[:2])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = {t: model(x, tasks=t) for t in ("t0", "t1")}
        model.add_task(runs[2], name="t2")
        assert model.tasks == ["t0", "t1", "t2"]
        for t in before:
            torch.testing.assert_close(model(x, tasks=t), before[t], rtol=0, atol=0)
        model.remove_task("t0")
        torch.testing.assert_close(model(x, tasks="t1"), before["t1"], rtol=0, atol=0)
        torch.testing.assert_close(model(x, tasks="t2"), single_task_model(backbone, runs[2])(x), rtol=1e-5,
                                   atol=1e-5)
    # t1 has no adapter at blocks.0.mlp and t2 none at blocks.0.attn / .mlp: with t0 gone, those positions are bare
    assert set(model.banks) == {"blocks.0.attn", "blocks.1.mlp"}
    assert type(model.backbone.blocks[0].mlp).__name__ == "Mlp"


def test_refusals_name_the_problem_and_change_nothing():
    backbone, runs = three_tasks("vit")
    model = multi(backbone, runs[:2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TaskExistsError, match=r"task: the name 't1' is taken \(by runs/t1\)"):
        model.add_task(runs[2], name="t1")
    other = copy.copy(runs[2])
    other.backbone = BackboneId("m", "{}", 16, 3, (0.5,), (0.5,), "sha256:1 (b.safetensors)")
    with pytest.raises(PrunekitError, match=r"runs/t2: trained on another backbone than runs/t0: weights "
                                            r"sha256:0 \(a.safetensors\) in runs/t0, sha256:1 \(b.safetensors\) in "
                                            r"runs/t2"):
        model.add_task(other, name="t9")
    wide = task(5, {"blocks.0.attn": (32, "channels_last")}, [2], 3, 32, kind="parallel")
    with pytest.raises(PrunekitError, match=r"adapter at blocks.0.attn is parallel, gelu, .* the tasks there "
                                            r"have series, gelu"):
        model.add_task(wide, name="t9")
    lost = task(6, {"blocks.9.attn": (32, "channels_last")}, [2], 3, 32)
    with pytest.raises(PrunekitError, match=r"has an adapter at blocks.9.attn, which the backbone lacks"):
        model.add_task(lost, name="t9")
    with pytest.raises(UnknownNameError, match=r"unknown task 't3'; did you mean 't1' or 't0'\? tasks: t0, t1"):
        model(torch.randn(1, 3, 16, 16), tasks=["t3"])
    with pytest.raises(PrunekitError, match=r"tasks: 2 names for a batch of 1 samples"):
        model(torch.randn(1, 3, 16, 16), tasks=["t0", "t1"])
    assert model.tasks == ["t0", "t1"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and state.keys() == \
        model.state_dict().keys()
