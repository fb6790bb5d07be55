import pytest
import prunekit as pk
import torch
from torch import nn

from prunekit import (
    Engine, Plan, PrunekitError, count_parameters, find_adapters, inject_adapters, mark_trainable, replay,
)
from prunekit.adapters.groups import adapter_groups

from conftest import tiny_vit

X = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(0))


def make_model(sigma=2.0):
    model = tiny_vit()
    inject_adapters(model, sigma=sigma)  # 4 adapters of 16 neurons on 32-d sub-layers
    mark_trainable(model)
    return model


class Trainer:
    """A minimal training loop that remembers what the engine handed it."""

    def __init__(self, steps=2):
        self.steps, self.calls = steps, []

    def __call__(self, model, optimizer, cycle):
        self.calls.append((cycle, optimizer, {id(p) for g in optimizer.param_groups for p in g["params"]}))
        model.train()
        for _ in range(self.steps):
            loss = nn.functional.cross_entropy(model(X), Y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"loss": loss.item()}


def test_tina_reaches_target_with_cycle_count_fixed_up_front():
    model, trainer = make_model(), Trainer()
    engine = Engine(model, trainer, example_inputs=X[:1], strategy="tina", rho=0.5, sigma_target=16)
    assert engine.cycles == 4 and engine.prune_after == {0: 32, 1: 16, 2: 8}  # 64 neurons, sigma 2 -> 16
    history = engine.run()
    assert [c for c, _, _ in trainer.calls] == [0, 1, 2, 3]
    assert [sum(r.widths.values()) for r in history] == [64, 32, 16, 8]
    assert [r.sigma for r in history] == [2.0, 4.0, 8.0, 16.0]
    assert history[-1].sigma >= 16 and history[-1].plan is None
    assert all(history[i].widths_after == history[i + 1].widths for i in range(3))
    params = [r.trainable_params for r in history]
    assert params == sorted(params, reverse=True) and params[0] > params[-1]
    assert params[-1] == count_parameters(model, trainable_only=True)
    # a fresh optimizer each cycle, holding exactly the model's current trainable parameters
    opts = [o for _, o, _ in trainer.calls]
    assert len({id(o) for o in opts}) == 4
    assert trainer.calls[-1][2] == {id(p) for p in model.parameters() if p.requires_grad}


def test_global_selection_removes_whole_adapters_and_the_model_still_trains():
    model = make_model()

    def train(model, optimizer, cycle):
        if cycle == 0:  # make the first block's adapters clearly the least important
            with torch.no_grad():
                for name, a in find_adapters(model).items():
                    if name.startswith("blocks.0"):
                        a.down.weight.mul_(1e-3)
                        a.up.weight.fill_(1e-4)
                    else:
                        a.up.weight.fill_(0.5)
        return Trainer(1)(model, optimizer, cycle)

    engine = Engine(model, train, example_inputs=X[:1], strategy="tina", rho=0.5, sigma_target=4)
    history = engine.run()
    assert history[0].plan.meta["removed_adapters"] == ["blocks.0.attn.adapter", "blocks.0.mlp.adapter"]
    assert history[1].widths == {"blocks.0.attn.adapter.down": 0, "blocks.0.mlp.adapter.down": 0,
                                 "blocks.1.attn.adapter.down": 16, "blocks.1.mlp.adapter.down": 16}
    assert set(find_adapters(model)) == {"blocks.1.attn.adapter", "blocks.1.mlp.adapter"}


def test_local_selection_keeps_every_adapter():
    model = make_model()
    history = Engine(model, Trainer(1), example_inputs=X[:1], strategy="local_l1", sigma_target=8).run()
    assert list(history[-1].widths.values()) == [4, 4, 4, 4]


def test_oneshot_prunes_once_and_trains_the_iterative_budget():
    model = make_model(sigma=4)  # one prune of rho = 0.5 from 4 lands on sigma_target = 8
    trainer = Trainer(1)
    engine = Engine(model, trainer, example_inputs=X[:1], strategy="global_scaled_oneshot", rho=0.5,
                    sigma_target=8, sigma_reference=1)
    assert engine.cycles == 4  # iterative from sigma 1 to 8: 3 prunes + 1
    history = engine.run()
    assert [r.plan is not None for r in history] == [True, False, False, False]
    assert [r.sigma for r in history] == [4.0, 8.0, 8.0, 8.0]


def test_activation_scorer_needs_calibration_before_any_training():
    trainer = Trainer()
    with pytest.raises(PrunekitError, match="pass calibration="):
        Engine(make_model(), trainer, example_inputs=X[:1], strategy="global_activation", sigma_target=8)
    assert trainer.calls == []
    history = Engine(make_model(), Trainer(1), example_inputs=X[:1], strategy="global_activation",
                     sigma_target=8, calibration=[X[:8], (X[8:], Y[8:])]).run()
    assert history[-1].sigma == 8


def test_custom_scorer_and_callbacks():
    events = []
    model = make_model()
    keep_last = lambda group, stats: torch.arange(group.width, dtype=torch.float32)  # noqa: E731
    engine = Engine(model, Trainer(1), example_inputs=X[:1], scorer=keep_last, scope="local", sigma_target=4,
                    groups_fn="adapters")
    engine.add_callback("on_prune", lambda eng, plan: events.append(("prune", plan.n_removed)))
    engine.add_callback("on_cycle_end", lambda eng, rec: events.append(("end", rec.cycle)))
    history = engine.run()
    assert events == [("prune", 32), ("end", 0), ("end", 1)]
    assert history[0].plan.remove["blocks.0.attn.adapter.down"] == list(range(8))  # the lowest scores: first half
    with pytest.raises(PrunekitError, match="unknown 'on_epoch'"):
        engine.add_callback("on_epoch", print)


def test_model_without_adapters_is_refused():
    with pytest.raises(PrunekitError, match="no prunable groups; inject adapters first"):
        Engine(tiny_vit(), Trainer(), example_inputs=X[:1], strategy="tina", sigma_target=16)


def test_the_engine_has_no_default_strategy_budget_or_groups():
    """Nothing adapter- or TINA-specific is assumed: the strategy (or a scorer), the budget and the groups are given,
    or come from the strategy (the built-in strategies are adapter strategies)."""
    with pytest.raises(PrunekitError, match="pass strategy= .* or scorer="):
        Engine(make_model(), Trainer(), example_inputs=X[:1], sigma_target=16)
    with pytest.raises(PrunekitError, match="pass budget= .* or sigma_target="):
        Engine(make_model(), Trainer(), example_inputs=X[:1], strategy="tina")
    with pytest.raises(PrunekitError, match="strategy 'custom' names no group source; pass groups_fn="):
        Engine(make_model(), Trainer(), example_inputs=X[:1], scorer="l1", sigma_target=16)
    engine = Engine(make_model(), Trainer(), example_inputs=X[:1], strategy="tina", sigma_target=16)
    assert engine.groups_fn is pk.adapter_groups and engine.budget == pk.Budget.sigma(16)
    assert not engine.check_forward  # the adapter policy: removal keeps the model well-formed by construction


def test_plans_replay_on_a_fresh_model(tmp_path):
    model = make_model()
    engine = Engine(model, Trainer(1), example_inputs=X[:1], strategy="tina", sigma_target=16)
    engine.run()
    Plan.save_all(engine.plans, tmp_path / "plan.json")
    fresh = make_model()
    replay(fresh, Plan.load_all(tmp_path / "plan.json"), X[:1])
    fresh.load_state_dict(model.state_dict())  # strict: identical structure
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)
    assert {g.name: g.width for g in adapter_groups(fresh, X[:1])} == \
        {k: v for k, v in engine.history[-1].widths.items() if v}


def test_stale_plan_is_refused_before_cutting():
    model = make_model()
    groups = adapter_groups(model, X[:1])
    plan = Plan(widths={g.name: g.width + 1 for g in groups}, remove={groups[0].name: [0]})
    with pytest.raises(PrunekitError, match="expects group"):
        plan.apply(model, groups)
    assert all(a.hidden == 16 for a in find_adapters(model).values())
