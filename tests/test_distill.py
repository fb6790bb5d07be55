"""Distillation during recovery: the loss is the formula, alpha 0 is plain training bit for bit, the teacher is the
model before the first prune (frozen), and a misconfigured teacher is refused before training."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import Budget, Engine, backbone_groups
from prunekit.config import parse_section
from prunekit.engine.distill import Distill, Teacher, distillation_loss, soft_kl
from prunekit.errors import ConfigError, PrunekitError
from prunekit.recipe.sections import TrainSection

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_loss(zs, zt, y, alpha, T):
    """The formula written out in NumPy (float64): (1 - a) CE + a T^2 KL(softmax(zt / T) || softmax(zs / T))."""
    zs, zt = np.asarray(zs, np.float64), np.asarray(zt, np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ce = -log_softmax(zs)[np.arange(len(y)), y].mean()
    ls, lt = log_softmax(zs / T), log_softmax(zt / T)
    kl = (np.exp(lt) * (lt - ls)).sum(-1).mean()
    return (1 - alpha) * ce + alpha * T * T * kl


ZS = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 4.0, 0.0, 1.0]]
ZT = [[1.5, -0.5, 1.0, 0.2], [0.0, 0.0, 2.0, -1.0], [-2.0, 3.0, 0.5, 0.5]]
Y = [0, 2, 3]


@pytest.mark.parametrize("alpha, T", [(0.0, 1.0), (0.5, 4.0), (0.9, 2.0), (1.0, 1.0)])
def test_the_loss_is_the_formula_on_fixed_logits(alpha, T):
    got = distillation_loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y), alpha=alpha, temperature=T)
    assert got.item() == pytest.approx(reference_loss(ZS, ZT, Y, alpha, T), rel=1e-6)
    total = distillation_loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y), alpha=alpha, temperature=T,
                              reduction="sum")
    assert total.item() == pytest.approx(3 * got.item(), rel=1e-6)  # a distributed rank sums its share


def test_the_soft_term_is_zero_for_equal_logits_and_its_gradient_reaches_only_the_student():
    zs = torch.tensor(ZS, requires_grad=True)
    zt = torch.tensor(ZT, requires_grad=True)
    assert soft_kl(zs, zs.detach(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    distillation_loss(zs, zt, torch.tensor(Y), alpha=1.0, temperature=2.0).backward()
    assert zs.grad.abs().sum() > 0 and zt.grad is None


@pytest.mark.parametrize("kw, message", [
    ({"alpha": 1.5}, "distill.alpha: expected the soft term's weight in [0, 1], got 1.5"),
    ({"temperature": 0}, "distill.temperature: expected a finite number > 0, got 0"),
    ({"teacher": "unpruned"}, "distill.teacher: expected an nn.Module or None"),
])
def test_bad_settings_are_named(kw, message):
    with pytest.raises(PrunekitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Distill(**kw)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


DATA = batches()


def train_fn_factory(seen: list):
    """A hand-written loop using the teacher as the engine docs say: teacher.loss(z, teacher.logits(x), y)."""

    def train_fn(model, optimizer, cycle, teacher=None):
        seen.append((cycle, teacher))
        model.train()
        for x, y in DATA:
            z = model(x)
            loss = nn.functional.cross_entropy(z, y) if teacher is None else teacher.loss(z, teacher.logits(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"loss": loss.item()}

    return train_fn


def run_engine(distill):
    model, seen = MLP(), []
    engine = Engine(model, train_fn_factory(seen), example_inputs=torch.randn(2, 8), scorer="l1",
                    budget=Budget.channels(0.5), rho=0.3, groups_fn=backbone_groups(), distill=distill)
    engine.run()
    return model, engine, seen


def test_alpha_zero_reproduces_plain_training_bit_for_bit():
    plain, _, _ = run_engine(None)
    zero, engine, seen = run_engine(Distill(alpha=0.0, temperature=4.0))
    assert [c for c, t in seen] == [0, 1, 2] and seen[0][1] is None and all(t is not None for _, t in seen[1:])
    for (n, a), (_, b) in zip(plain.state_dict().items(), zero.state_dict().items()):
        assert torch.equal(a, b), n
    distilled, _, _ = run_engine(Distill(alpha=0.7, temperature=2.0))
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), distilled.state_dict().values()))


def test_the_teacher_is_the_model_before_the_first_prune_frozen_and_untouched_by_recovery():
    snapshots = {}
    model, seen = MLP(), []
    train_fn = train_fn_factory(seen)
    engine = Engine(model, train_fn, example_inputs=torch.randn(2, 8), scorer="l1", budget=Budget.channels(0.5),
                    rho=0.3, groups_fn=backbone_groups(), distill=Distill(alpha=0.5))

    def after_cycle_0(eng, record):
        if record.cycle == 0:
            snapshots["before"] = {k: v.clone() for k, v in eng.teacher.model.state_dict().items()}
    engine.add_callback("on_cycle_end", after_cycle_0)
    engine.run()
    teacher = engine.teacher
    assert teacher.model.fc1.out_features == 32 and model.fc1.out_features < 32  # unpruned vs pruned
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    after = teacher.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in snapshots["before"].items())  # recovery did not train it
    assert all(t is teacher for _, t in seen[1:])  # one teacher, for every cycle after a prune


def test_a_train_fn_without_a_teacher_keyword_is_refused_before_training():
    calls = []
    with pytest.raises(PrunekitError, match="distill: train_fn .* takes no teacher= keyword"):
        Engine(MLP(), lambda m, o, c: calls.append(c), example_inputs=torch.randn(2, 8), scorer="l1",
               budget=Budget.channels(0.5), groups_fn=backbone_groups(), distill=Distill())
    assert calls == []


def test_a_teacher_of_another_task_is_refused():
    other = nn.Sequential(nn.Linear(8, 10))
    with pytest.raises(PrunekitError, match=r"distill.teacher: its outputs have shapes \[\(2, 10\)\], the model's "
                                            r"\[\(2, 4\)\]"):
        Engine(MLP(), train_fn_factory([]), example_inputs=torch.randn(2, 8), scorer="l1",
               budget=Budget.channels(0.5), groups_fn=backbone_groups(), distill=Distill(teacher=other))


def test_a_given_teacher_teaches_and_a_resumed_engine_without_one_says_what_to_do():
    given = MLP()
    _, engine, seen = run_engine(Distill(teacher=given))
    assert all(t.model is given for _, t in seen[1:]) and not given.training
    fresh = Engine(MLP(), train_fn_factory([]), example_inputs=torch.randn(2, 8), scorer="l1",
                   budget=Budget.channels(0.5), rho=0.3, groups_fn=backbone_groups(), distill=Distill())
    with pytest.raises(PrunekitError, match=r"needs engine.set_teacher\(model as it was before the first prune\)"):
        fresh.teacher_for(2)
    assert fresh.teacher_for(0) is None  # cycle 0 trains before the first prune: no teacher
    fresh.set_teacher(copy.deepcopy(given))
    assert isinstance(fresh.teacher_for(2), Teacher)


def test_the_trainer_mixes_the_teacher_in_and_alpha_zero_is_its_plain_loss():
    from prunekit.train.trainer import Trainer

    cfg = parse_section(TrainSection, {"epochs": 1, "warmup_epochs": 0, "lr": 1e-2, "label_smoothing": 0.1})
    trainer = Trainer(cfg, None, None, torch.device("cpu"))
    zs, zt, y = torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y)
    zero = Teacher(MLP(), Distill(alpha=0.0))
    assert torch.equal(trainer.loss(zs, y, zt, zero), trainer.loss(zs, y, None, None))
    half = Teacher(MLP(), Distill(alpha=0.5, temperature=2.0))
    smoothed = nn.functional.cross_entropy(zs, y, label_smoothing=0.1)
    want = 0.5 * smoothed + 0.5 * 4 * soft_kl(zs, zt, 2.0)
    assert trainer.loss(zs, y, zt, half).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("value, message", [
    ({"alpha": 2}, "train.distill.alpha: expected a weight in [0, 1], got 2"),
    ({"temperature": -1}, "train.distill.temperature: expected a finite number > 0, got -1"),
    ({"teachr": "unpruned"}, "train.distill.teachr: unknown key; did you mean 'teacher'?"),
    ({"alpha": "high"}, "train.distill.alpha: expected a float, got 'high'"),
])
def test_the_recipe_section_is_strict(value, message):
    with pytest.raises(ConfigError) as e:
        parse_section(TrainSection, {"distill": value}, "train")
    assert message in str(e.value)


def test_the_recipe_section_defaults_to_off():
    d = parse_section(TrainSection, {}, "train").distill
    assert d.teacher is None and d.alpha == 0.5 and d.temperature == 4.0
    assert math.isfinite(parse_section(TrainSection, {"distill": {"teacher": "unpruned"}}, "train").distill.alpha)


def test_the_estimate_adds_a_teacher_forward_to_every_step_of_the_distilled_cycles():
    from prunekit.run.estimate import Workload

    work = Workload(cycles=3, epochs=2, steps_per_epoch=10, val_images=100, distilled_cycles=2)
    plain = Workload(3, 2, 10, 100).seconds(1.0, 0.01)
    assert plain == 6 * (10 + 1)
    assert work.seconds(1.0, 0.01, teacher_step_s=0.25) == plain + 4 * 10 * 0.25
    assert work.seconds(1.0, 0.01, from_epoch=5, teacher_step_s=0.25) == 1 * (10 + 1) + 10 * 0.25


def test_distillation_without_a_prune_is_refused():
    from prunekit.recipe.spec import Recipe

    with pytest.raises(ConfigError, match="train.distill.teacher: distillation teaches the cycles after a prune, and "
                                          "strategy 'none' prunes nothing"):
        parse_section(Recipe, {"strategy": {"name": "none"}, "train": {"distill": {"teacher": "unpruned"}}})
