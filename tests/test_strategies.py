import tomllib
from pathlib import Path

import pytest
import torch

from prunekit import Engine, UnknownNameError, get_strategy, inject_adapters, list_strategies, mark_trainable
from prunekit.ranking.scopes import SCOPES
from prunekit.ranking.scorers import SCORERS
from prunekit.engine.strategy import STRATEGIES, Strategy, register_strategy

from conftest import tiny_vit

EXPECTED = {
    # name: (scorer, scope, mode) -- the rows of the paper's Table 3
    "tina": ("tina", "global", "iterative"),
    "vanilla_l1": ("l1_down", "local", "oneshot"),
    "local_l1": ("l1", "local", "iterative"),
    "local_l1_oneshot": ("l1", "local", "oneshot"),
    "global_activation": ("l1_activation_scaled", "global", "iterative"),
    "global_activation_oneshot": ("l1_activation_scaled", "global", "oneshot"),
    "global_unscaled": ("l1", "global", "oneshot"),
    "global_unscaled_iterative": ("l1", "global", "iterative"),  # TINA without 1 / (n + m)
    "global_scaled_oneshot": ("tina", "global", "oneshot"),
}


def test_builtin_strategies_compose_the_paper_rows():
    assert {s.name: (s.scorer, s.scope, s.mode) for s in list_strategies()} == EXPECTED


def test_builtins_are_declared_as_entry_points():
    # pyproject.toml, not the installed metadata (which may come from another checkout); the wheel test checks the
    # installed entry points.
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    eps = pyproject["project"]["entry-points"]["prunekit.strategies"]
    builtin = {"tina", "vanilla_l1", "local_l1", "global_activation", "global_unscaled", "global_scaled_oneshot"}
    assert set(eps) == builtin
    assert eps == {name: f"prunekit.strategies.{name}" for name in builtin}  # never a top-level `strategies`
    for name in builtin:
        assert (Path(__file__).resolve().parents[1] / "strategies" / f"{name}.py").is_file(), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_strategy_runs_end_to_end(name):
    torch.manual_seed(0)
    model = tiny_vit()
    s = get_strategy(name)
    inject_adapters(model, sigma=s.initial_sigma(4, 16, 0.5))
    mark_trainable(model)
    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 5, (8,))

    def train(model, opt, cycle):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    history = Engine(model, train, example_inputs=x[:1], strategy=name, sigma_target=16, sigma_reference=4,
                     calibration=[x]).run()
    assert len(history) == 3 and history[-1].sigma >= 16
    assert SCORERS.get(s.scorer) and SCOPES.get(s.scope)


def test_unknown_strategy_suggests_close_names():
    with pytest.raises(UnknownNameError, match="unknown strategy 'tian'; did you mean 'tina'"):
        get_strategy("tian")


def test_a_user_strategy_registers_and_duplicates_are_refused():
    mine = register_strategy(Strategy(name="my_random_local", scorer="random", scope="local"))
    assert get_strategy("my_random_local") is mine
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Strategy(name="tina", scorer="random"))
    STRATEGIES._entries.pop("my_random_local")
