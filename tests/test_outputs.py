"""What a model returned (prunekit.core.outputs) and the after-pruning check that compares it."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.outputs import output_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


class Cache:
    """Stands for a KV cache: state, not output."""

    def __init__(self):
        self.keys = [torch.zeros(1)]


@dataclass
class Record:
    logits: torch.Tensor
    hidden: tuple


def test_every_tensor_in_order_and_nothing_else():
    a, b, c, d = (torch.full((i + 1,), float(i)) for i in range(4))
    out = OrderedDict(logits=a, cache=Cache(), loss=None, extra=[b, (c, 3)], rec=Record(d, (a,)))
    assert [t.shape[0] for t in output_tensors(out)] == [1, 2, 3, 4, 1]
    assert output_tensors(a)[0] is a and output_tensors(None) == [] and output_tensors("text") == []


class TwoMaps(nn.Module):
    """A backbone returning two feature maps (27 channels at two resolutions)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 27, 1))
        self.b = nn.Sequential(nn.Conv2d(27, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 27, 1))

    def forward(self, x):
        f1 = self.a(x)
        return f1, self.b(f1)


def test_with_forward_fn_the_check_compares_what_forward_fn_returns_before_and_after():
    """Was refused: 'output shapes changed from [(2, 27, 16, 16), (2, 27, 8, 8)] to [(2, 8640)]'."""
    torch.manual_seed(0)
    model, x = TwoMaps().eval(), torch.randn(2, 3, 16, 16)

    def flat(m, inputs):
        return torch.cat([f.flatten(1) for f in m(inputs)], 1)

    with torch.no_grad():
        before = flat(model, x).shape
    plan = pk.prune(model, x, ratio=0.3, target="params", forward_fn=flat)
    assert abs(plan.meta["reached"] - 0.3) < 0.05
    with torch.no_grad():
        assert flat(model, x).shape == before == (2, 27 * 16 * 16 + 27 * 8 * 8)
