"""Check: every name in a recipe resolved, with did-you-mean errors, before anything heavy happens.

:func:`check_recipe` is the first step of every command that reads a recipe (run, dry run, inspect, eval). It returns
the method with its validated config, set to the sigma the adapters are injected at (a one-shot strategy's start),
and the strategy with the recipe's ``strategy.scorer`` / ``scope`` / ``mode`` in place of its own; it records what it
derived in ``recipe.resolved``, which ``recipe.resolved.yaml`` then shows.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ..core import distributed as dist_utils
from ..models.backbone import check_model_name
from ..data.datasets import DATASETS
from ..errors import PrunekitError, ConfigError, UnknownNameError, problems_of
from ..methods import Method, build_method
from ..recipe.spec import Recipe
from ..recipe.sections import ResolvedSection
from ..ranking.scopes import get_scope
from ..ranking.scorers import get_scorer
from ..engine.strategy import Strategy, get_strategy
from .metrics import check_tensorboard

__all__ = ["Checked", "check_recipe", "check_world", "STRATEGY_PARTS"]

STRATEGY_PARTS = ("scorer", "scope", "mode")  # what a recipe may replace in its strategy
T = TypeVar("T")


@dataclass(frozen=True)
class Checked:
    """A recipe's names, resolved.

    Attributes:
        method: the method of ``method.name``.
        config: its config, with ``sigma`` (where it has one) at the value the adapters are injected at.
        strategy: the strategy with the recipe's overrides; None for strategy 'none'.
    """

    method: Method
    config: Any
    strategy: Strategy | None


def check_recipe(recipe: Recipe) -> Checked:
    """Resolve every name in the recipe; fills ``recipe.resolved``.

    Every name is checked (model, method and its keys, strategy and its parts, data) and one
    :class:`~prunekit.errors.ConfigError` lists every problem. Also refuses ``strategy.groups: backbone`` with a
    method that freezes the backbone (``Method.freezes_backbone``), and such a method on random weights unless the
    recipe says ``model.allow_random_backbone: true``.
    """
    problems: list[str] = []

    def attempt(check: Callable[[], T]) -> T | None:
        try:
            return check()
        except PrunekitError as e:
            problems.extend(problems_of(e))
            return None

    attempt(lambda: check_model_name(recipe.model.name))
    method_config = attempt(lambda: build_method(recipe.method))
    strategy = attempt(lambda: _resolve_strategy(recipe))
    attempt(lambda: _check_data_name(recipe))
    if recipe.output.tensorboard:
        attempt(check_tensorboard)
    if method_config is not None:
        method, config = method_config
        if strategy is not None:
            attempt(lambda: _check_fit(recipe, strategy, method, config))
        attempt(lambda: _check_weights(recipe, method))
    if problems:
        raise ConfigError(*problems)
    strategy = None if strategy is NONE else strategy
    sigma = getattr(config, "sigma", None)
    by_sigma = recipe.strategy.budget.kind is None  # a params / MACs / channels budget has no sigma schedule
    reference = _sigma_reference(recipe, strategy, sigma) if by_sigma else None
    if strategy is not None and sigma is not None and by_sigma:
        s = recipe.strategy
        config = dataclasses.replace(config, sigma=strategy.initial_sigma(sigma, s.sigma_target, s.rho))
    recipe.resolved = ResolvedSection(
        method_sigma=getattr(config, "sigma", None),
        scorer=None if strategy is None else _reference(strategy.scorer),
        scope=None if strategy is None else _reference(strategy.scope),
        mode=None if strategy is None else strategy.mode,
        sigma_reference=reference)
    return Checked(method, config, strategy)


def _sigma_reference(recipe: Recipe, strategy: Strategy | None, sigma: float | None) -> float | None:
    """A one-shot run trains as many cycles as an iterative run from this sigma: ``strategy.sigma_reference``, else
    where the recipe's adapters start (``method.sigma``), so both train as long. None for iterative strategies, and
    for a fixed ``method.hidden`` width (the engine measures the adapters' starting compression then)."""
    if strategy is None or strategy.mode != "oneshot":
        return None
    s = recipe.strategy
    if s.sigma_reference is not None:
        return s.sigma_reference
    if sigma is not None and not s.sigma_target > sigma:
        raise ConfigError(f"strategy.sigma_target: a one-shot run trains as many cycles as an iterative run from "
                          f"method.sigma={sigma:g} (the default strategy.sigma_reference) to sigma_target, so "
                          f"sigma_target must be above it; got {s.sigma_target:g}")
    return sigma


NONE = Strategy("none", scorer=None)  # strategy 'none', resolved (check_recipe returns None for it)


def _check_data_name(recipe: Recipe) -> None:
    try:
        DATASETS.get(recipe.data.name)
    except KeyError as e:
        raise ConfigError(f"data.name: {e}") from None


def _resolve_strategy(recipe: Recipe) -> Strategy:
    """The recipe's strategy with its scorer / scope / mode replaced, every part imported; :data:`NONE` for 'none'."""
    s = recipe.strategy
    replaced = {k: getattr(s, k) for k in STRATEGY_PARTS if getattr(s, k) is not None}
    if s.name == "none":
        if replaced:
            raise ConfigError(*[f"strategy.{k}: strategy 'none' prunes nothing; remove the key or name a strategy"
                                for k in replaced])
        return NONE
    try:
        strategy = dataclasses.replace(get_strategy(s.name), **replaced)
    except KeyError as e:
        raise ConfigError(f"strategy.name: {e} (or 'none')") from None
    problems = []
    for part, get in (("scorer", get_scorer), ("scope", get_scope)):
        try:
            get(getattr(strategy, part))  # a 'module:function' path is imported here
        except PrunekitError as e:
            if part in replaced:
                problems.append(f"strategy.{part}: {e}")
            else:
                names = "names an " if isinstance(e, UnknownNameError) else ""  # a plug-in strategy's own part
                problems.append(f"strategy.name: strategy {strategy.name!r} {names}{e}")
    if problems:
        raise ConfigError(*problems)
    return strategy


def _check_fit(recipe: Recipe, strategy: Strategy, method: Method, config: Any) -> None:
    """Backbone pruning needs a method that trains the backbone; adapter pruning a method with prunable groups and,
    for the sigma budget, a sigma_target above the method's sigma."""
    if strategy is NONE:
        return
    s = recipe.strategy
    if s.groups == "backbone":
        if method.freezes_backbone:
            raise ConfigError(f"strategy.groups: 'backbone' prunes the model's own channels and heads and fine-tunes "
                              f"them, but method {method.name!r} keeps the backbone frozen; use method full (every "
                              "parameter trains), or strategy.groups: adapters")
        return
    if not method.prunable:
        raise ConfigError(f"strategy.name: {strategy.name!r} prunes adapters, but method {method.name!r} has no "
                          "prunable groups; use method adapters or parallel_adapters, strategy.groups: backbone "
                          "(with method full), or strategy 'none'")
    if s.budget.kind is not None:
        return
    sigma = getattr(config, "sigma", None)
    if sigma is not None and strategy.mode == "iterative" and not s.sigma_target > sigma:
        raise ConfigError(f"strategy.sigma_target: expected more than method.sigma={sigma:g} (pruning only raises "
                          f"sigma), got {s.sigma_target:g}")


def _check_weights(recipe: Recipe, method: Method) -> None:
    m = recipe.model
    if method.freezes_backbone and not (m.checkpoint or m.pretrained or m.allow_random_backbone):
        raise ConfigError(
            f"model: method {method.name!r} freezes the backbone, but {m.name!r} would keep its random initial "
            "weights (no model.checkpoint, model.pretrained: false): training on frozen random features is "
            "meaningless. Set model.checkpoint (with model.pretrain to make it) or model.pretrained: true; or "
            "model.allow_random_backbone: true to do it on purpose (tests, smoke runs)")


def _reference(part: object) -> str:
    """How a strategy part reads in ``recipe.resolved.yaml``: its name, or ``module:function`` for a callable."""
    if isinstance(part, str):
        return part
    return f"{getattr(part, '__module__', '?')}:{getattr(part, '__qualname__', type(part).__name__)}"


def check_world(recipe: Recipe) -> None:
    """Under torchrun, the global batch must give every process at least one image."""
    world = dist_utils.world_size()
    if world > 1 and recipe.train.batch_size < world:
        raise ConfigError(f"train.batch_size: the global batch ({recipe.train.batch_size}) must be at least the "
                          f"number of processes ({world})")
