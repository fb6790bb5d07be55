"""YAML files read strictly: UTF-8 text, well-formed, and no alias bomb (recipes, ablations, resolved recipes).

A malformed file names the line and column; anchors and aliases (``&a`` / ``*a``) are expanded in the counting, so a
document that would expand to more than :data:`MAX_YAML_VALUES` values ("billion laughs") or that refers to itself
is refused, naming the key, before anything is built from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["MAX_YAML_VALUES", "read_yaml", "safe_load_bounded"]

MAX_YAML_VALUES = 100_000  # a recipe holds a few hundred values; anchors and aliases may not expand beyond this


def read_yaml(path: str | Path, what: str = "recipe") -> Any:
    """The YAML document of a file, read strictly: UTF-8 text, well-formed, and no alias bomb.

    Anchors and aliases (``&a`` / ``*a``) are expanded in the counting: a document whose values, aliases expanded,
    number more than :data:`MAX_YAML_VALUES` ("billion laughs") or that refers to itself is refused before anything
    is built from it. Returns None for a file holding no document (empty, or only comments).

    Args:
        path: the file.
        what: what the file is, for the messages ("recipe", "ablation", ...).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {str(path)!r} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}, byte offset {e.start}); "
                          f"save the {what} as UTF-8") from None
    try:
        return safe_load_bounded(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None


def safe_load_bounded(text: str, source: str, prefix: str = "") -> Any:
    """``yaml.safe_load`` that refuses alias bombs and self-referring aliases.

    Args:
        text: the YAML text.
        source: what the text is, for messages (a file name, ``--set KEY``).
        prefix: the recipe path of the text's top level ('' for a file; the key of a ``--set`` value).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source, prefix)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply to read (thousands of levels of [ or {{)") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str, prefix: str = "") -> None:
    """Refuse a node graph that refers to itself or whose aliases expand beyond :data:`MAX_YAML_VALUES` values."""
    sizes: dict[int, int] = {}  # id(node) -> number of values once every alias under it is expanded
    active: set[int] = set()

    def children(node: yaml.Node, where: str) -> list[tuple[str, yaml.Node]]:
        if isinstance(node, yaml.SequenceNode):
            return [(f"{where}[{i}]", c) for i, c in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out = []
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                out += [(where or "<top level>", k), (f"{where}.{name}" if where else str(name), v)]
            return out
        return []

    def size(node: yaml.Node, where: str) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            mark = node.start_mark
            raise ConfigError(f"{where or source}: a YAML alias refers to the anchor it sits in (line "
                              f"{mark.line + 1}), a structure that contains itself; write the value out instead")
        active.add(key)
        sizes[key] = 1 + sum(size(c, w) for w, c in children(node, where))
        active.discard(key)
        return sizes[key]

    total = size(root, prefix)
    if total <= MAX_YAML_VALUES:
        return
    node, where = root, prefix
    while isinstance(node, yaml.MappingNode):  # the deepest key whose value alone expands beyond the limit
        big = [(w, c) for w, c in children(node, where) if sizes[id(c)] > MAX_YAML_VALUES]
        if not big:
            break
        where, node = big[-1]
    raise ConfigError(f"{where or source}: YAML anchors and aliases expand to {sizes[id(node)]:,} values, more than "
                      f"the {MAX_YAML_VALUES:,} a recipe may hold (an alias bomb, 'billion laughs'?); write the "
                      f"values out or use fewer aliases")
