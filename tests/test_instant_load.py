"""Loading a pruned model resizes its modules from the saved record: no tracing, no example inputs, no forward."""
import json

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

import prunekit as pk
from prunekit.core.plan import Plan
from prunekit.core.structure import changes, resize, snapshot


def _no_tracing(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("load_pruned traced the model")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", refuse)


@pytest.mark.parametrize("name,kwargs,size", [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4), 32),
    ("resnet18", {}, 32),
])
def test_load_pruned_resizes_without_tracing(tmp_path, monkeypatch, name, kwargs, size):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    pk.prune(model, x[:1], ratio=0.4)
    pk.save_pruned(model, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "prunekit.json").read_text())["plans"][0]["meta"]["structure"]
    assert record["tensors"] and record["attrs"]  # what was sliced, and the sizes the forward reads
    _no_tracing(monkeypatch)
    fresh = pk.load_pruned(tmp_path / "m", timm.create_model(name, num_classes=10, **kwargs)).eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    if name.startswith("vit"):
        assert [b.attn.num_heads for b in fresh.blocks] == [b.attn.num_heads for b in model.blocks]


class Armed(nn.Module):
    """A model whose forward only runs once it is armed: tracing it at load time would fail."""

    def __init__(self):
        super().__init__()
        self.armed = True
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        if not self.armed:
            raise RuntimeError("not armed")
        return self.body(x)


def test_a_model_that_cannot_run_at_load_time_loads(tmp_path):
    model = Armed().eval()
    x = torch.randn(2, 3, 8, 8)
    pk.prune(model, x[:1], ratio=0.3)
    pk.save_pruned(model, tmp_path / "m")
    fresh = Armed()
    fresh.armed = False
    pk.load_pruned(tmp_path / "m", fresh)
    fresh.armed = True
    torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)


def test_files_without_recorded_changes_still_load_by_replay(tmp_path):
    model = Armed().eval()
    x = torch.randn(2, 3, 8, 8)
    pk.prune(model, x[:1], ratio=0.3)
    pk.save_pruned(model, tmp_path / "m")
    meta_path = tmp_path / "m" / "prunekit.json"
    meta = json.loads(meta_path.read_text())
    for p in meta["plans"]:
        del p["meta"]["structure"]  # as files written before plans recorded their changes
    meta_path.write_text(json.dumps(meta))
    fresh = pk.load_pruned(tmp_path / "m", Armed())
    torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)


def test_mismatch_is_refused_before_anything_changes(tmp_path):
    model = Armed().eval()
    pk.prune(model, torch.randn(1, 3, 8, 8), ratio=0.3)
    pk.save_pruned(model, tmp_path / "m")
    other = Armed()
    other.body[3] = nn.Conv2d(8, 8, 3)  # another kernel size
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(pk.ArchitectureMismatchError, match=r"body.3.weight: expected shape \(8, 8, 1, 1\)"):
        pk.load_pruned(tmp_path / "m", other)
    assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in before.items()}


class _Unit:
    """A hand-made group: a Linear's output neurons and a non-persistent per-neuron buffer of its owner."""

    kind = "neuron"
    policy = None

    def __init__(self, owner: "WithBuffer"):
        self.owner, self.name = owner, "fc"

    @property
    def width(self):
        return self.owner.fc.out_features

    def prune(self, idxs):
        keep = [i for i in range(self.width) if i not in set(idxs)]
        fc = self.owner.fc
        fc.weight = nn.Parameter(fc.weight.data[keep].clone())
        fc.bias = nn.Parameter(fc.bias.data[keep].clone())
        fc.out_features = len(keep)
        self.owner.out.weight = nn.Parameter(self.owner.out.weight.data[:, keep].clone())
        self.owner.out.in_features = len(keep)
        self.owner.scale = self.owner.scale[keep].clone()


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 6), nn.Linear(6, 2)
        self.register_buffer("scale", torch.arange(6.0) + 1, persistent=False)

    def forward(self, x):
        return self.out(self.fc(x) * self.scale)


def test_a_resized_non_persistent_buffer_travels_beside_the_weights(tmp_path):
    torch.manual_seed(0)
    model = WithBuffer()
    plan = Plan(widths={"fc": 6}, remove={"fc": [1, 4]})
    plan.apply(model, {"fc": _Unit(model)})
    pk.save_pruned(model, tmp_path / "m", [plan])  # no example inputs: loading never traces
    assert (tmp_path / "m" / "buffers.safetensors").is_file()
    fresh = pk.load_pruned(tmp_path / "m", WithBuffer())
    assert fresh.scale.tolist() == [1.0, 3.0, 4.0, 6.0]
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_resize_keeps_shared_parameters_shared():
    a, b = nn.Linear(4, 6), nn.Linear(4, 6)
    b.weight = a.weight
    model = nn.Sequential(a, b)
    before = snapshot(model)
    a.weight = b.weight = nn.Parameter(a.weight.data[:3].clone())
    a.out_features = b.out_features = 3
    a.bias, b.bias = nn.Parameter(a.bias.data[:3].clone()), nn.Parameter(b.bias.data[:3].clone())
    record = changes(before, model)
    assert record["attrs"] == {"0": {"out_features": 3}, "1": {"out_features": 3}}
    fresh = nn.Sequential(nn.Linear(4, 6), nn.Linear(4, 6))
    fresh[1].weight = fresh[0].weight
    resize(fresh, record, {})
    assert fresh[0].weight is fresh[1].weight and fresh[0].weight.shape == (3, 4)
    assert fresh[1].bias.shape == (3,) and fresh[1].bias is not fresh[0].bias


def test_weights_that_do_not_fit_the_record_are_refused_before_anything_changes(tmp_path):
    from safetensors.torch import load_file, save_file

    model = Armed().eval()
    pk.prune(model, torch.randn(1, 3, 8, 8), ratio=0.3)
    pk.save_pruned(model, tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights["body.7.weight"] = weights["body.7.weight"][:1].clone()  # an edited file: one class fewer
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    fresh = Armed()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(pk.ArchitectureMismatchError, match=r"body.7.weight: saved \(1, \d+\), the resized model "
                                                            r"would have \(2, \d+\)"):
        pk.load_pruned(tmp_path / "m", fresh)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
