"""A latency budget: measured per-group lookup table, selection corrected by measuring a pruned copy. On a
deterministic fake clock (a "device" whose Linear layers cost by blocks of 8 output rows) the target is met within
one unit; an unreachable target is refused before anything changes; the table is cached and reused."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import Budget, Engine, backbone_groups
from prunekit.budget import latency as lat
from prunekit.budget import meter as meters
from prunekit.budget.latency import LatencyTable, latency_table
from prunekit.budget.meter import LatencyMeter
from prunekit.budget.search import unit_limits
from prunekit.core.policy import UnreachableTargetError
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")

NS = 1e-9


def fake_clock(module, args, kwargs):
    """Seconds of one call on a made-up device: every Linear costs ceil(out / 8) * 8 * in per row (a vector unit of
    8 lanes), plus 1 us per call; deterministic, so the budget's arithmetic can be checked exactly."""
    rows = next(t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)).shape[0]
    total = 1e-6
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += math.ceil(m.out_features / 8) * 8 * m.in_features * rows * NS
    return total


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(24, 96), nn.Linear(96, 80), nn.Linear(80, 64), \
            nn.Linear(64, 5)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.head(self.act(self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))))


def clock_of(model, batch=4):
    return fake_clock(model, (torch.zeros(batch, 24),), {})


METER = LatencyMeter(batch_size=4, timer=fake_clock)
X = torch.randn(2, 24)


@pytest.mark.parametrize("ratio, round_to", [(0.3, None), (0.5, None), (0.5, 8), (0.7, 4)])
def test_prune_meets_a_latency_target_on_a_fake_clock_within_one_unit(ratio, round_to):
    model = Net()
    before = clock_of(model)
    plan = pk.prune(model, X, ratio=ratio, target="latency", latency=METER, round_to=round_to)
    after = clock_of(model)
    goal, tol = plan.meta["budget"]["goal"], plan.meta["budget"]["tolerance"]
    assert goal == pytest.approx(ratio * before)
    assert tol > 0 and abs((before - after) - goal) <= tol + 1e-15, (before - after, goal, tol)
    m = plan.meta["latency"]
    assert m["before_ms"] == pytest.approx(1e3 * before) and m["measured_ms"] == pytest.approx(1e3 * after)
    assert m["batch_size"] == 4 and m["timer"].endswith("fake_clock")
    if round_to:
        assert all(layer.out_features % round_to == 0 for layer in (model.fc1, model.fc2, model.fc3))
    assert model(X).shape == (2, 5)


def test_the_engine_reaches_a_latency_budget_over_its_prunes_on_the_fake_clock():
    model = Net()
    before = clock_of(model)
    engine = Engine(model, lambda m, o, c: {}, example_inputs=X, scorer="l1", rho=0.4,
                    budget=Budget.latency(0.6, meter=METER), groups_fn=backbone_groups())
    history = engine.run()
    plans = [r.plan for r in history if r.plan is not None]
    assert len(plans) == engine.cycles - 1 >= 2
    done = before - clock_of(model)
    tol = max(p.meta["budget"]["tolerance"] for p in plans)
    assert abs(done - 0.6 * before) <= tol + 1e-15
    assert history[-2].reached == pytest.approx(done / before)  # the engine measured what it reached


def test_an_unreachable_latency_target_is_refused_before_anything_changes():
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # every hidden width down to 1 still leaves the head, the input layer's rows and the per-call cost
    with pytest.raises(UnreachableTargetError, match=r"ratio: 0.99 of the model's latency cannot be removed; .* at "
                                                     r"most 0\.9"):
        pk.prune(model, X, ratio=0.99, target="latency", latency=METER)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(UnreachableTargetError):
        Engine(model, lambda m, o, c: {}, example_inputs=X, scorer="l1", budget=Budget.latency(0.99, meter=METER),
               groups_fn=backbone_groups())
    assert model.fc1.out_features == 96


def test_the_table_measures_what_each_group_saves_at_a_few_widths():
    model = Net()
    fn = backbone_groups()
    groups = fn(model, X)
    table = latency_table(model, fn, X, METER, unit_limits(groups))
    assert set(table.points) == {g.name for g in groups}
    fc1 = next(n for n in table.points if n.startswith("fc1"))
    r, saved = table.points[fc1][1]  # half of the 95 units that may go: fc1's rows and fc2's columns shrink
    want = (96 - math.ceil((96 - r) / 8) * 8) * 24 * 4 * NS + 80 * r * 4 * NS
    assert saved == pytest.approx(want, rel=1e-9)
    assert [p[0] for p in table.points[fc1]] == sorted(p[0] for p in table.points[fc1])
    assert table.total == pytest.approx(clock_of(model))
    assert table.floor_fraction == pytest.approx(1 - clock_of(_at_floor()) / clock_of(model), rel=1e-9)
    assert model.fc1.out_features == 96  # measured on a copy


def _at_floor():
    m = Net()
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(m, name)
        setattr(m, name, nn.Linear(layer.in_features if name == "fc1" else 1, 1))
    m.head = nn.Linear(1, 5)
    return m


def test_interpolation_is_linear_between_points_and_monotone():
    table = LatencyTable({"a": [(2, 1.0), (4, 3.0)]}, total=10.0)
    assert table.saved("a", 0) == 0 and table.saved("a", 1) == 0.5 and table.saved("a", 3) == 2.0
    assert table.saved("a", 6) == pytest.approx(4.5) and table.removed({"a": 4, "b": 3}) == 3.0
    assert lat._monotone([(1, 2.0), (2, 1.5), (3, 4.0)]) == [(1, 2.0), (2, 2.0), (3, 4.0)]
    assert LatencyTable.from_dict(table.to_dict()).points == table.points


def test_the_wall_clock_table_is_cached_per_model_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    calls = []
    real = meters.wall_clock
    monkeypatch.setattr(meters, "wall_clock", lambda *a: calls.append(1) or real(*a))
    model, fn = Net(), backbone_groups()
    limits = unit_limits(fn(model, X))
    meter = LatencyMeter(batch_size=2, warmup=0, repeats=1)
    first = latency_table(model, fn, X, meter, limits)
    n = len(calls)
    assert n > 0 and len(list((tmp_path / "latency").glob("*.json"))) == 1
    again = latency_table(model, fn, X, meter, limits)
    assert len(calls) == n and again.points == first.points  # read back, nothing measured
    latency_table(model, fn, X, LatencyMeter(batch_size=3, warmup=0, repeats=1), limits)
    assert len(calls) > n and len(list((tmp_path / "latency").glob("*.json"))) == 2  # another batch: measured


@pytest.mark.integration  # a wall clock: seconds of timing, and a shared machine's noise
def test_the_real_clock_prunes_a_cnn_to_a_faster_model():
    import timm

    model = timm.create_model("resnet18", num_classes=10).eval()
    plan = pk.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, target="latency",
                    latency=LatencyMeter(batch_size=4, threads=1, cache=False, repeats=5))
    m = plan.meta["latency"]
    assert m["measured_ms"] < m["before_ms"] and m["threads"] == 1
    assert 0 < plan.meta["budget"]["reached"] < 1


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "latency.batch_size: expected an integer >= 1 or None, got 0"),
    ({"repeats": 0}, "latency.repeats: expected an integer >= 1, got 0"),
    ({"threads": 1.5}, "latency.threads: expected an integer >= 1 or None, got 1.5"),
])
def test_bad_meter_settings_are_named(kw, message):
    with pytest.raises(PrunekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LatencyMeter(**kw)


def test_a_meter_with_another_target_and_an_unknown_target_are_refused():
    with pytest.raises(PrunekitError, match="latency: a LatencyMeter applies to target='latency', got target='macs'"):
        pk.prune(Net(), X, ratio=0.5, target="macs", latency=METER)
    with pytest.raises(PrunekitError, match="target: unknown 'latncy'; did you mean 'latency'"):
        pk.prune(Net(), X, ratio=0.5, target="latncy")


def test_the_meter_repeats_the_example_to_its_batch_and_restores_the_threads():
    args, kwargs = LatencyMeter(batch_size=5).batch(torch.arange(2.0).reshape(2, 1))
    assert args[0].reshape(-1).tolist() == [0, 1, 0, 1, 0]
    threads = torch.get_num_threads()
    LatencyMeter(threads=threads + 1, timer=fake_clock).measure(Net(), X)
    assert torch.get_num_threads() == threads
