"""The engine with budgets other than sigma, on backbone groups; one trace per prune; bounded schedules."""
import pytest
import torch
import torch_pruning as tp
from torch import nn

import prunekit as pk
from prunekit import Budget, Engine, PrunekitError, UnreachableTargetError, backbone_groups, replay
from prunekit.budget.search import count_macs, count_parameters
from prunekit.engine.schedule import MAX_PRUNES, Schedule, ratio_steps

from conftest import tiny_swin, tiny_vit
from test_engine import Trainer, X, make_model

XC = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
YC = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_thread")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4, 20), nn.ReLU(), nn.Linear(20, 4),
    )


def train_cnn(model, optimizer, cycle):
    model.train()
    loss = nn.functional.cross_entropy(model(XC), YC)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"loss": loss.item()}


def test_one_trace_per_prune(monkeypatch):
    calls = []
    build = tp.DependencyGraph.build_dependency

    def counted(self, *args, **kwargs):
        calls.append(1)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counted)
    engine = Engine(make_model(), Trainer(1), example_inputs=X[:1], strategy="tina", rho=0.5, sigma_target=8)
    assert engine.cycles == 3 and len(calls) == 1
    engine.run()
    assert len(calls) == 1 + 2  # the check before training, then one per prune
    engine.widths(), repr(engine)  # what the runner reads every cycle comes from the last trace
    assert len(calls) == 3


@pytest.mark.parametrize("scope", ["global", "local"])
def test_params_budget_prunes_backbone_channels_iteratively(scope):
    model = cnn()
    start = count_parameters(model)
    engine = Engine(model, train_cnn, example_inputs=XC[:1], strategy="tina", scorer="l1_mean", scope=scope,
                    budget=Budget.params(0.75), rho=0.5, groups_fn=backbone_groups())
    assert engine.cycles == 3 and engine.prune_after == {0: 0.5, 1: 0.75}
    history = engine.run()
    assert [r.plan is not None for r in history] == [True, True, False]
    for record in history[:2]:
        budget = record.plan.meta["budget"]
        assert record.reached == budget["reached"]
        assert abs(budget["reached"] - budget["target"]) * start <= budget["tolerance"] + 1e-6 * start
    assert abs(1 - count_parameters(model) / start - 0.75) * start <= history[1].plan.meta["budget"]["tolerance"]
    assert model(XC).shape == (8, 4)
    assert history[1].plan.meta["groups"]["source"] == "backbone"
    fresh = cnn()
    replay(fresh, engine.plans, XC[:1])  # the plans say how to find their groups again
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(XC), model(XC), rtol=0, atol=0)


def test_channels_budget_removes_exactly_and_macs_budget_is_counted():
    model = cnn()
    groups = backbone_groups()(model, XC[:1])
    units = sum(g.width for g in groups)
    engine = Engine(model, train_cnn, example_inputs=XC[:1], scorer="l2", budget=Budget.channels(0.5), rho=0.5,
                    groups_fn=backbone_groups(), scope="local")
    engine.run()
    assert sum(engine.widths().values()) == units - round(0.5 * units)
    model = cnn()
    macs = count_macs(model, XC[:1])
    engine = Engine(model, train_cnn, example_inputs=XC[:1], scorer="l1", budget=Budget.macs(0.6), rho=0.6,
                    groups_fn=backbone_groups())
    history = engine.run()
    budget = history[0].plan.meta["budget"]
    assert abs((macs - count_macs(model, XC[:1])) - 0.6 * macs) <= budget["tolerance"]


def test_unreachable_ratio_is_refused_before_training():
    trainer = Trainer(1)
    with pytest.raises(UnreachableTargetError, match=r"ratio: 0.999 of the model's params cannot be removed; .* at "
                                                     r"most 0\.\d+ can go"):
        Engine(cnn(), trainer, example_inputs=XC[:1], scorer="l1", budget=Budget.params(0.999),
               groups_fn=backbone_groups())
    assert trainer.calls == []


@pytest.mark.parametrize("rho,cycles", [(1e-9, "2,079,441,542"), (1e-4, "20,795")])
def test_tiny_rho_is_refused_with_the_cycle_count_it_implies(rho, cycles):
    with pytest.raises(PrunekitError, match=fr"rho: {rho:g} needs [\d,]+ prunes \({cycles} training cycles\) to reach "
                                            f"sigma_target=256 from sigma0=32; at most {MAX_PRUNES}"):
        Schedule(rho=rho, sigma_target=256).widths(24, 24 * 32)
    with pytest.raises(PrunekitError, match=f"rho: {rho:g} needs .* prunes .* to reach ratio=0.5"):
        ratio_steps(0.5, rho)


def test_tiny_rho_in_the_engine_fails_fast():
    with pytest.raises(PrunekitError, match="rho: 1e-09 needs .* at most 100"):
        Engine(make_model(), Trainer(1), example_inputs=X[:1], strategy="tina", rho=1e-9, sigma_target=16)


def test_oneshot_error_names_sigma_reference():
    s = Schedule(rho=0.5, sigma_target=64, mode="oneshot", sigma_reference=128)
    with pytest.raises(PrunekitError, match=r"sigma_reference: expected a compression below sigma_target=64 "
                                            r"\(.*\), got 128"):
        s.cycles(10, 320)


def test_ratio_steps_remove_rho_of_what_is_left_and_land_on_the_ratio():
    assert ratio_steps(0.75, 0.5) == [0.5, 0.75]
    assert ratio_steps(0.5, 0.5) == [0.5]
    steps = ratio_steps(0.9, 0.3)
    assert steps[:2] == pytest.approx([0.3, 0.51]) and steps[-1] == 0.9 and len(steps) == 7


def test_a_scope_that_ignores_the_target_is_refused_before_cutting():
    def sloppy(scores, fraction=None, *, target=None, limits=None):
        return pk.global_scope(scores, target=max(0, (target or 0) - 3))

    model = make_model()
    engine = Engine(model, Trainer(1), example_inputs=X[:1], strategy="tina", scope=sloppy, sigma_target=8)
    with pytest.raises(PrunekitError, match="scope 'sloppy' missed this prune's target: it removes 29 .* target is "
                                            "32"):
        engine.run()
    assert sum(a.hidden for a in pk.find_adapters(model).values()) == 64  # untouched


def test_adapter_engine_records_sigma_reached():
    history = Engine(make_model(), Trainer(1), example_inputs=X[:1], strategy="tina", rho=0.5,
                     sigma_target=16).run()
    assert [r.reached for r in history] == [4.0, 8.0, 16.0, None]
    assert history[0].plan.meta["budget"] == {"kind": "sigma", "target": 32, "goal": 32.0, "planned": 32.0,
                                              "tolerance": 0.0, "reached": 4.0}
    assert tiny_vit  # the adapters' backbone


@pytest.mark.parametrize("sigma", [8, 16, 32, 96])
def test_local_strategy_lands_on_every_sigma_with_uneven_adapters(sigma):
    model = tiny_swin()
    pk.inject_adapters(model, sigma=4)  # adapters of 4, 4, 8, 8 neurons on 16, 16, 32, 32-wide sub-layers
    pk.mark_trainable(model)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))

    def train(m, opt, cycle):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {}

    history = Engine(model, train, example_inputs=x[:1], strategy="local_l1", sigma_target=sigma).run()
    assert sum(history[-1].widths.values()) == 96 // sigma  # floor(sum m / sigma): sigma reached exactly
    assert history[-1].sigma == 96 / (96 // sigma)
    assert all(w >= 1 for w in history[-1].widths.values()) or 96 // sigma < 4  # fewer units than adapters


@pytest.mark.parametrize("ratio", [0.3, 0.4, 0.5, 0.6])
def test_params_budget_with_round_to_lands_within_one_step(ratio):
    """With ``round_to=8`` a group's width moves 8 units at a time, so the budget is met within one step (8 units'
    cost), not one unit: the engine accepts that plan and every width stays a multiple of 8 (or the original)."""
    model = cnn()
    start = count_parameters(model)
    original = {g.name: g.width for g in backbone_groups()(model, XC[:1])}
    engine = Engine(model, train_cnn, example_inputs=XC[:1], scorer="l1", budget=Budget.params(ratio), rho=ratio,
                    groups_fn=backbone_groups(round_to=8))
    history = engine.run()
    budget = history[0].plan.meta["budget"]
    assert abs((start - count_parameters(model)) - ratio * start) <= budget["tolerance"] + 1e-6 * start
    assert all(w == original[n] or w % 8 == 0 for n, w in engine.widths().items()), engine.widths()
    assert model(XC).shape == (8, 4)
