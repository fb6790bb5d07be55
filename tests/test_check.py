"""The check phase: a recipe's strategy parts replaced by name, and ``recipe.resolved`` recording what runs."""
from __future__ import annotations

import pytest
import yaml

from prunekit.errors import ConfigError
from prunekit.methods.lora import LoRAConfig
from prunekit.recipe.spec import load_recipe, recipe_to_dict
from prunekit.run import build_model, check_recipe, example_inputs
from prunekit.run.prune import prunable_groups
from prunekit.ranking.scorers import coupled_l1
from test_cli import tiny_recipe


def test_a_one_shot_start_is_recorded_and_the_users_sigma_kept(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path), ["strategy.name=vanilla_l1", "strategy.sigma_target=32"])
    checked = check_recipe(recipe)
    assert checked.config.sigma == 16.0  # 32 x (1 - 0.5): one prune of rho lands on the target
    resolved = recipe_to_dict(recipe)
    assert resolved["method"]["sigma"] == 4  # what the user wrote stays
    assert resolved["resolved"] == {"method_sigma": 16.0, "scorer": "l1_down", "scope": "local", "mode": "oneshot",
                                    "sigma_reference": 4.0}  # trains as long as an iterative run from sigma 4
    model = build_model(recipe, 10, random_weights=True)
    assert {g.width for g in prunable_groups(model, recipe)} == {2}  # m = 32, injected at sigma 16


def test_fixed_width_adapters_record_no_sigma(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path), ["strategy.name=none", "method={name: adapters, hidden: 3}"])
    check_recipe(recipe)
    assert recipe.resolved.method_sigma is None  # n_i = 3 everywhere, not the default sigma 32
    model = build_model(recipe, 10, random_weights=True)
    assert {g.width for g in prunable_groups(model, recipe)} == {3}


def test_strategy_parts_replace_the_strategys_own(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path), ["strategy.scope=local", "strategy.mode=oneshot",
                                                 "strategy.scorer=prunekit.ranking.scorers:coupled_l1",
                                                 "strategy.sigma_reference=4"])
    strategy = check_recipe(recipe).strategy
    assert (strategy.name, strategy.scorer, strategy.scope, strategy.mode) == \
        ("tina", "prunekit.ranking.scorers:coupled_l1", "local", "oneshot")
    assert recipe.resolved.scorer == "prunekit.ranking.scorers:coupled_l1" and recipe.resolved.method_sigma == 8.0
    assert recipe.resolved.sigma_reference == 4  # strategy.sigma_reference, as given
    assert example_inputs(recipe).shape == (1, 3, 16, 16)


def test_resolved_values_read_from_a_file_are_recomputed(tmp_path):
    path = tiny_recipe(tmp_path, resolved={"method_sigma": 99.0, "scorer": "random", "scope": "local",
                                           "mode": "oneshot"})
    recipe = load_recipe(path)
    check_recipe(recipe)
    assert recipe_to_dict(recipe)["resolved"] == {"method_sigma": 4.0, "scorer": "tina", "scope": "global",
                                                  "mode": "iterative", "sigma_reference": None}
    assert "resolved" not in recipe_to_dict(recipe, resolved=False)
    again = load_recipe(_dump(tmp_path / "again.yaml", recipe_to_dict(recipe)))  # recipe.resolved.yaml runs as is
    check_recipe(again)
    assert recipe_to_dict(again) == recipe_to_dict(recipe)


def _dump(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_strategy_with_a_callable_scorer_records_its_path(tmp_path, monkeypatch):
    from prunekit.engine.strategy import STRATEGIES, Strategy

    monkeypatch.setitem(STRATEGIES._entries, "callable_scorer", Strategy("callable_scorer", scorer=coupled_l1))
    recipe = load_recipe(tiny_recipe(tmp_path), ["strategy.name=callable_scorer"])
    check_recipe(recipe)
    assert recipe.resolved.scorer == "prunekit.ranking.scorers:coupled_l1"


def test_strategy_none_takes_no_parts(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path), ["strategy.name=none", "strategy.scorer=tina"])
    with pytest.raises(ConfigError, match="strategy.scorer: strategy 'none' prunes nothing"):
        check_recipe(recipe)
    plain = load_recipe(tiny_recipe(tmp_path), ["strategy.name=none"])
    check_recipe(plain)
    assert plain.resolved.scorer is None and plain.resolved.method_sigma == 4.0


def test_methods_raise_config_errors_the_recipe_parser_also_catches():
    assert not hasattr(__import__("prunekit.errors").errors, "RecipeError")  # one name for one type
    with pytest.raises(ConfigError, match=r"method.rank: expected an integer >= 1, got 0"):
        LoRAConfig(rank=0)
