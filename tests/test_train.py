import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.recipe.sections import TrainSection
from prunekit.train.trainer import (
    NonFiniteLossError, Trainer, param_groups, resolve_precision, seed_everything, select_device, warmup_cosine,
)


def test_warmup_then_cosine_per_cycle():
    total, warmup = 100, 20
    lrs = [warmup_cosine(s, total, warmup, 0.0) for s in range(total)]
    assert lrs[0] == pytest.approx(1 / 20) and lrs[19] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))  # then monotone decay
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert warmup_cosine(total, total, warmup, 0.1) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    groups = param_groups(model.parameters(), 0.05)
    assert [len(g["params"]) for g in groups] == [1, 2] and [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_device_and_precision_choices():
    assert select_device("cpu").type == "cpu"
    assert resolve_precision("auto", torch.device("cpu")) is False  # bf16 autocast only where the device supports it
    assert resolve_precision("bf16", torch.device("cpu")) is True
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="CUDA is not available"):
            select_device("cuda")


def make_trainer(epochs=2, lr=0.05, x=None):
    torch.manual_seed(0)
    x = torch.randn(64, 5) if x is None else x
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    cfg = TrainSection(epochs=epochs, warmup_epochs=1, lr=lr, batch_size=16, device="cpu")
    seen = []
    return Trainer(cfg, loader, DataLoader(TensorDataset(x, y), batch_size=32), torch.device("cpu"),
                   on_epoch_end=seen.append), seen


def test_a_cycle_trains_evaluates_each_epoch_and_reports_best_and_last():
    seed_everything(0)
    trainer, seen = make_trainer(epochs=3)
    model = nn.Linear(5, 2)
    out = trainer.train_cycle(model, trainer.make_optimizer(model.parameters()), cycle=0)
    assert [m["epoch"] for m in seen] == [0, 1, 2] and all("val_acc" in m for m in seen)
    assert out["best_top1"] == max(m["val_acc"] for m in seen) and out["last_top1"] == seen[-1]["val_acc"]
    assert out["last_top1"] > 0.8  # a separable problem is learned
    assert seen[-1]["lr"] < seen[0]["lr"]


def test_training_is_deterministic_on_cpu():
    results = []
    for _ in range(2):
        seed_everything(0)
        trainer, _ = make_trainer()
        model = nn.Linear(5, 2)
        trainer.train_cycle(model, trainer.make_optimizer(model.parameters()), cycle=0)
        results.append(model.weight.detach().clone())
    assert torch.equal(results[0], results[1])


def test_non_finite_loss_stops_with_the_step():
    x = torch.randn(64, 5)
    x[20] = float("nan")
    trainer, _ = make_trainer(x=x)
    model = nn.Linear(5, 2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at cycle 0, epoch 1, step \d"):
        trainer.train_cycle(model, trainer.make_optimizer(model.parameters()), cycle=0)
