"""Recurrent hidden units as groups (prunekit.core.tpcompat's pruner): all gates, both weight matrices, every layer."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk

sys.path.insert(0, str(Path(__file__).parent))
from any_models import TextRNN, _token_ids  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cell, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_hidden_units_that_nothing_reads_go_without_changing_the_output(cell, gates):
    torch.manual_seed(0)
    model, x = TextRNN(cell).eval(), _token_ids()
    group = next(g for g in pk.backbone_groups(verify=False)(model, x) if g.name == "rnn")
    assert [(m.name, m.role) for m in group.members] == [("rnn", "producer"), ("head", "consumer")]
    assert group.width == 64 and group.rows()[0].shape == (64, gates * (32 + 64 + 2) + gates * (64 + 64 + 2))
    with torch.no_grad():  # units 0..9: nothing reads them (the head, the recurrence, the second layer)
        model.head.weight[:, :10] = 0
        for k in range(2):
            getattr(model.rnn, f"weight_hh_l{k}")[:, :10] = 0
        model.rnn.weight_ih_l1[:, :10] = 0
        before = model(x)
    group.prune(list(range(10)))
    assert model.rnn.hidden_size == 54 and model.rnn.weight_hh_l1.shape == (gates * 54, 54)
    like = cell(32, 54, num_layers=2, batch_first=True)  # exactly the shapes of a layer built 54 wide
    assert {n: p.shape for n, p in model.rnn.named_parameters()} == {n: p.shape for n, p in like.named_parameters()}
    assert model.head.in_features == 54
    torch.testing.assert_close(model(x), before, rtol=1e-6, atol=1e-6)


def test_bidirectional_and_projected_layers_are_named_and_left_alone():
    class Bi(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.head = nn.Embedding(96, 16), nn.LSTM(16, 32, bidirectional=True), nn.Linear(64, 3)

        def forward(self, x):
            return self.head(self.rnn(self.emb(x))[0][:, -1])

    source = pk.backbone_groups(verify=False)
    groups = source(Bi().eval(), _token_ids())
    assert "rnn" not in {g.name for g in groups}
    assert "bidirectional" in source.excluded["rnn"]


def test_a_model_with_nothing_prunable_is_refused_by_name_and_left_unchanged():
    class OnlyBi(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.GRU(8, 16, bidirectional=True, batch_first=True), nn.Linear(32, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = OnlyBi().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.UnsupportedModelError, match=r"OnlyBi has no prunable group \(rnn: GRU hidden units are "
                                                        r"not pruned: bidirectional"):
        pk.prune(model, torch.randn(2, 5, 8), ratio=0.3, target="params")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
