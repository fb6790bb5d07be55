"""Recipes: strict, validated dataclasses read from YAML (``spec``) and the recipes shipped with prunekit
(``builtin``); the dataclass helpers they are built from are :mod:`prunekit.config`.
"""
