"""What a user keeps: ``ignore=`` resolved to modules, one rule for every kind of group.

``ignore`` holds module names, ``fnmatch`` patterns (``'blocks.0.*'``) or module objects. Each item must match at
least one module of the model (a typo is an error with close names, never a silent no-op); a matched module is
ignored with all its sub-modules. Channel groups keep the output channels of ignored modules, head groups keep the
heads of ignored attention modules.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

from torch import nn

from ..registry import PrunekitError, did_you_mean

__all__ = ["resolve_ignore"]


def resolve_ignore(model: nn.Module, ignore: Iterable[str | nn.Module]) -> tuple[set, list[str]]:
    """Modules to ignore (with their sub-modules) and their names; a pattern matching nothing is an error."""
    names = {m: n for n, m in model.named_modules()}
    modules, resolved = set(), []
    for item in ignore:
        if isinstance(item, nn.Module):
            if item not in names:
                raise PrunekitError(f"ignore: {type(item).__name__} module is not part of the model")
            hits = [item]
        elif isinstance(item, str):
            hits = [m for m, n in names.items() if n and (n == item or fnmatch.fnmatchcase(n, item))]
            if not hits:
                raise PrunekitError(f"ignore: no module matches {item!r};{did_you_mean(item, list(names.values()))} "
                                    f"module names look like: {', '.join(n for n in list(names.values())[1:6])}")
        else:
            raise PrunekitError(f"ignore: expected module names, glob patterns or modules, got {item!r}")
        for m in hits:
            modules.update(m.modules())
            resolved.append(names[m])
    return modules, resolved
