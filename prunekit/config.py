"""Configs as strict dataclasses: a field's help text, parsing a mapping into a dataclass, documenting its keys.

The machinery under every config prunekit reads (a recipe's sections, a method's options, an ablation grid), so
methods and datasets validate their own options without importing the recipe parser. Parsing is strict: an unknown
key or a wrong type raises :class:`~prunekit.errors.ConfigError` with the key's path, the value and what is allowed
(``train.lr: expected a float, got 'fast'``; ``trian: unknown key; did you mean 'train'?``)::

    @dataclass
    class LoRAConfig:
        rank: int = field(**option("r, the rank of every update", default=8))

    parse_section(LoRAConfig, {"rank": "8"}, "method")   # ConfigError: method.rank: expected an integer, got '8'
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Callable, Literal, Mapping, Optional, Union

from .errors import ConfigError, did_you_mean

__all__ = ["option", "check_count", "check_all", "parse_section", "field_docs", "type_name"]


def option(text: str, **kw) -> dict:
    """``dataclasses.field`` keyword arguments of a documented option: ``field(**option("help", default=1))``."""
    return {"metadata": {"help": text}, **kw}


def check_count(path: str, value: Optional[int], minimum: int, unset: Optional[str] = None) -> None:
    """``value`` >= ``minimum``; None is allowed (and means ``unset``) only when ``unset`` says what it means."""
    if value is None and unset is not None:
        return
    if value is None or value < minimum:
        null = f" or null ({unset})" if unset else ""
        raise ConfigError(f"{path}: expected an integer >= {minimum}{null}, got {value}")


def type_name(tp) -> str:
    """How a type reads in messages and docs: ``an integer or null``, ``'adamw' or 'sgd'``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args) + " or null"
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: expected {type_name(tp)}, got {value!r};"
                              f"{did_you_mean(str(value), [str(a) for a in allowed])}".rstrip(";"))
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return parse_section(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a float, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a float, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(tp) is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (object,)
        return [v if item is object else _convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def parse_section(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys, wrong types and values its checks refuse
    raise one :class:`ConfigError` listing every problem, in every nested section.

    Every key is converted, and every nested section parsed, before anything is refused. A section whose keys did
    not all convert is still built from the keys that did (defaults standing in for the others) so its own checks
    run; of what they refuse, only problems of keys the user gave and that converted are kept, and none that names a
    key that failed (``train.warmup_epochs: expected 0..train.epochs`` is not judged against a default epochs).
    """
    where = path or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs, problems = {}, []
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            allowed = f"allowed in {where}: {', '.join(fields)}" if fields else f"{where} takes no keys here"
            problems.append(f"{key_path}: unknown key;{did_you_mean(str(key), list(fields))} {allowed}")
            continue
        try:
            kwargs[key] = _convert(value, hints[key], key_path)
        except ConfigError as e:
            problems += e.problems
    if problems:
        failed = [f"{path}.{k}" if path else str(k) for k in data if k not in kwargs]
        try:
            cls(**kwargs)
        except ConfigError as e:
            problems += [p for p in e.problems if _about_given(p, path, kwargs, failed)]
        except (TypeError, ValueError):
            pass
        raise ConfigError(*problems)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _about_given(problem: str, path: str, given: Mapping[str, Any], failed: list[str]) -> bool:
    """Whether ``problem`` (``key.path: ...``) is about a key of ``given`` and names no key in ``failed``."""
    key = problem.split(":", 1)[0].strip()
    if path:
        if not key.startswith(path + "."):
            return False
        key = key[len(path) + 1:]
    return key.split(".")[0].split("[")[0] in given and not any(
        re.search(rf"(?<!\w){re.escape(f)}(?!\w)", problem) for f in failed)


def check_all(*checks: Callable[[], Any]) -> None:
    """Run every check; one :class:`ConfigError` listing what each refused (a section's ``__post_init__``)."""
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(*problems)


def field_docs(cls, prefix: str = "") -> list[tuple[str, str, str, Any]]:
    """(path, type, help, default) of every key of dataclass ``cls`` (nested sections flattened), for documentation."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, path + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((path, type_name(tp), f.metadata.get("help", ""), default))
    return rows
