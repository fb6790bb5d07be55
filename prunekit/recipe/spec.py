"""Recipes: strict, validated YAML run configurations.

A recipe is a tree of dataclasses (:class:`Recipe`, its sections in :mod:`prunekit.recipe.sections`). Loading is
strict: an unknown key or a wrong type fails with the key's YAML path, the value and what is allowed (``train.lr:
expected a float, got 'fast'``; ``trian: unknown key; did you mean 'train'?``). ``--set a.b=c`` overrides are parsed
as YAML values and checked the same way. Every field carries a ``help`` text; ``docs/recipes.md`` documents each one
(a test keeps the two in step).

The ``method`` section is open: its keys depend on ``method.name`` and are checked against that method's own config
(see :mod:`prunekit.methods`). The ``resolved`` section is written by prunekit (what a run derived; see
:class:`ResolvedSection`). Strict parsing lives in :mod:`prunekit.config`, strict YAML reading in
:mod:`prunekit.io.yamlfile`.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import field_docs, option, parse_section
from ..errors import ConfigError
from ..io.yamlfile import MAX_YAML_VALUES, read_yaml, safe_load_bounded
from .sections import (BackboneSection, DataSection, ModelSection, OutputSection,
                       ResolvedSection, StrategySection, TrainSection)

__all__ = ["Recipe", "ConfigError", "load_recipe", "read_yaml", "parse_section", "apply_overrides", "recipe_to_dict",
           "field_docs", "MAX_YAML_VALUES"]


@dataclass
class Recipe:
    name: str = field(**option("run name (default: the file name)", default="run"))
    description: str = field(**option("free text shown by `prunekit list recipes`", default=""))
    model: ModelSection = field(**option("the backbone", default_factory=ModelSection))
    method: dict = field(**option("what is trained: `name` (see `prunekit list methods`) and that method's keys",
                                  default_factory=lambda: {"name": "adapters"}))
    strategy: StrategySection = field(**option("how adapters are pruned", default_factory=StrategySection))
    data: DataSection = field(**option("the downstream task", default_factory=DataSection))
    train: TrainSection = field(**option("the training loop", default_factory=TrainSection))
    output: OutputSection = field(**option("what a run writes", default_factory=OutputSection))
    resolved: ResolvedSection = field(**option("written by prunekit: what the run derived (see ResolvedSection)",
                                               default_factory=ResolvedSection))
    source: Optional[str] = field(default=None, metadata={"help": "file the recipe was read from (set on load)",
                                                          "internal": True})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks across sections (types were checked while parsing, ranges by each section)."""
        self._validate_groups()
        if not isinstance(self.method.get("name"), str):
            raise ConfigError(f"method.name: expected a method name, got {self.method.get('name')!r}")

    def _validate_groups(self) -> None:
        """``strategy.groups``, ``strategy.budget`` and ``strategy.backbone`` agree with each other."""
        s = self.strategy
        if s.name == "none":
            if s.groups != "adapters" or s.budget.kind is not None:
                key = "groups" if s.groups != "adapters" else "budget"
                raise ConfigError(f"strategy.{key}: strategy 'none' prunes nothing; remove the key or name a strategy")
            if self.train.distill.teacher is not None:
                raise ConfigError("train.distill.teacher: distillation teaches the cycles after a prune, and strategy "
                                  "'none' prunes nothing; remove train.distill or name a strategy")
            return
        if s.groups == "backbone" and s.budget.kind is None:
            raise ConfigError("strategy.budget: strategy.groups 'backbone' needs a budget, one of params, macs, "
                              "channels, latency (e.g. strategy.budget: {macs: 0.5}); sigma_target is the adapters' "
                              "compression")
        if s.groups == "adapters":
            default = BackboneSection()
            changed = [f.name for f in dataclasses.fields(default) if getattr(s.backbone, f.name) != getattr(
                default, f.name)]
            if changed:
                raise ConfigError(f"strategy.backbone.{changed[0]}: applies to strategy.groups: backbone, but the "
                                  "recipe prunes adapters; set strategy.groups: backbone or remove the key")

    @property
    def method_name(self) -> str:
        return self.method["name"]


def _parse_value(text: str, key: str) -> Any:
    try:
        return safe_load_bounded(text, f"--set {key}", key)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``['train.lr=0.01', 'method.sigma=8']`` applied to a raw recipe mapping (values are YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.lr=0.001")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key in {key!r}")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {'.'.join(parts[:i + 1])}: is {nxt!r}, not a section")
            node = nxt
        value = _parse_value(raw, key.strip())
        if parts == ["method"] and isinstance(value, str):  # --set method=lora: switch the method, keep nothing else
            value = {"name": value}
        node[parts[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe: no such file {str(path)!r}")
    data = read_yaml(path, "recipe")
    if data is None:
        raise ConfigError(f"recipe {str(path)!r} is empty (no YAML document); a recipe names at least its model, "
                          f"method and data (see recipes/quickstart.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, method:, data:, ...) at the top level, "
                          f"got {_kind(data)} {_short(data)}")
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    _describe_overrides(data, overrides or [], path)
    recipe = parse_section(Recipe, data)
    recipe.source = str(path.resolve())
    return recipe


DESCRIBED_SECTIONS = ("model", "method", "strategy", "data")  # what a recipe's description speaks of


def _describe_overrides(data: dict, overrides: list[str], path: Path) -> None:
    """A recipe's description speaks of its own model, method, strategy and data: once ``--set`` changes one of them
    (and not the description itself), the run is described by the recipe and those overrides instead, so a report
    of the quickstart on a user's own images does not call it 'MNIST to digits'."""
    keys = [item.partition("=")[0].strip() for item in overrides]
    if "description" in keys:
        return
    changed = [item for item, key in zip(overrides, keys) if key.split(".")[0] in DESCRIBED_SECTIONS]
    if changed:
        data["description"] = f"{path.name} run with " + " ".join(f"--set {item}" for item in changed)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "an integer", float: "a float", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def recipe_to_dict(recipe: Recipe, resolved: bool = True) -> dict:
    """The recipe as plain data (what ``recipe.resolved.yaml`` holds); ``resolved=False`` leaves out the derived
    ``resolved`` section (to compare what two recipes ask for)."""
    d = dataclasses.asdict(recipe)
    d.pop("source", None)
    if not resolved:
        d.pop("resolved", None)
    return d
