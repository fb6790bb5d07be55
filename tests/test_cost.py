"""What a run records per cycle: parameters, MACs and batch-1 latency (prunekit/budget/cost.py)."""
import pytest
import torch

from conftest import tiny_vit
from prunekit.budget.search import count_macs, count_parameters
from prunekit.budget.cost import latency_ms, model_cost
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_cost_counts_what_the_budget_counts_and_times_a_forward():
    model, x = tiny_vit(), torch.zeros(1, 3, 16, 16)
    cost = model_cost(model, x)
    assert cost.params == count_parameters(model) and cost.macs == count_macs(model, x) > 0
    assert 0 < cost.latency_ms < 10_000


def test_latency_restores_the_mode_and_records_no_gradient():
    model, x = tiny_vit(), torch.zeros(1, 3, 16, 16)
    model.train()
    latency_ms(model, x, warmup=1, repeats=2)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    latency_ms(model, [x], warmup=0, repeats=1, forward_fn=lambda m, inputs: m(inputs[0]))
    assert not model.training
    with pytest.raises(PrunekitError, match="repeats >= 1"):
        latency_ms(model, x, repeats=0)
