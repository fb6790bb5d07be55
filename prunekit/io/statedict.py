"""Module versions that travel with saved weights, as torch's own ``state_dict()`` carries them.

``model.state_dict()`` is an ``OrderedDict`` with a ``_metadata`` attribute: for every module prefix, the module's
``_version`` (``{"blocks.0.bn": {"version": 2}, ...}``). ``load_state_dict`` hands each module its entry, and some
modules' ``_load_from_state_dict`` read it: torchvision's MNASNet refuses a state dict without it ("version should be
set to 1 or 2 instead of None"), BatchNorm converts files from before ``num_batches_tracked``. A safetensors file
holds tensors only, so prunekit writes the versions into the file's metadata and puts them back before loading::

    tensors = with_versions(model.state_dict())         # an OrderedDict with _metadata, for the modules saved
    save_safetensors(path, tensors)                     # metadata gains "prunekit.module_versions" (JSON)
    loaded = read_versions(load_file(path), metadata)   # _metadata again, from the file
    load_into(model, loaded, strict=True)               # a file without versions gets the model's own

A part of a state dict (a file of adapters and a head) keeps the entries of the modules that own or contain its
tensors, the whole one keeps all; the file lists only the entries that differ from ``nn.Module``'s default
``{"version": 1}``: a ViT's adapter file records none (a few bytes), a ResNet's its BatchNorms (version 2). Loading
gives every other module of the model the default again, so ``load_state_dict`` sees what ``state_dict()`` had.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn

DEFAULT = {"version": 1}  # nn.Module._version

__all__ = ["VERSIONS_KEY", "with_versions", "versions_metadata", "read_versions", "load_safetensors", "load_into",
           "complete_versions"]

VERSIONS_KEY = "prunekit.module_versions"


def _prefixes(keys) -> set[str]:
    """Every module prefix that owns or contains one of ``keys`` (``'a.b.weight'`` -> ``''``, ``'a'``, ``'a.b'``)."""
    out = {""}
    for k in keys:
        parts = k.split(".")[:-1]
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def with_versions(tensors: Mapping[str, torch.Tensor], source: nn.Module | Mapping[str, Any] | None = None
                  ) -> OrderedDict:
    """``tensors`` as an ``OrderedDict`` whose ``_metadata`` holds the module versions of the modules saved.

    Args:
        tensors: what is saved (a ``state_dict()``, or a part of one).
        source: where the versions come from: a model (its ``state_dict()``), or a state dict with ``_metadata``;
            default: ``tensors``' own ``_metadata``. When ``tensors`` is a part of it, only the entries of the
            modules that own or contain a saved tensor are kept; the whole state dict keeps every entry.
    """
    if isinstance(source, nn.Module):
        source = source.state_dict()
    whole = source if source is not None else tensors
    meta = getattr(whole, "_metadata", None)
    out = OrderedDict(tensors)
    if meta is not None:
        keep = None if set(out) >= set(whole) else _prefixes(out)
        out._metadata = OrderedDict((p, dict(v)) for p, v in meta.items()  # type: ignore[attr-defined]
                                    if keep is None or p in keep)
    return out


def versions_metadata(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{VERSIONS_KEY: json}`` for a file's metadata: the entries of ``tensors._metadata`` that differ from the
    default; empty when it has none."""
    meta = getattr(tensors, "_metadata", None)
    if meta is None:
        return {}
    differ = {p: dict(v) for p, v in meta.items() if dict(v) != DEFAULT}
    return {VERSIONS_KEY: json.dumps(differ, separators=(",", ":"))}


def read_versions(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> OrderedDict:
    """``tensors`` as an ``OrderedDict`` with the ``_metadata`` a file's metadata recorded (none when it has not)."""
    out = OrderedDict(tensors)
    raw = (metadata or {}).get(VERSIONS_KEY)
    if raw is not None:
        try:
            versions = json.loads(raw)
        except json.JSONDecodeError:
            versions = None
        if isinstance(versions, dict) and all(isinstance(v, dict) for v in versions.values()):
            full = OrderedDict((p, dict(DEFAULT)) for p in sorted(_prefixes(out)))
            full.update(versions)
            out._metadata = full  # type: ignore[attr-defined]
    return out


def load_safetensors(path) -> OrderedDict:
    """The tensors of a ``.safetensors`` file, with the module versions its metadata recorded."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return read_versions(tensors, metadata)


def load_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], strict: bool = True):
    """``model.load_state_dict(tensors, strict)`` with module versions: the tensors' own ``_metadata`` (from the
    file; every other module of ``model`` at the default version), else the model's (a file written before versions
    were saved, or by another tool that dropped them)."""
    return model.load_state_dict(complete_versions(tensors, model), strict=strict)


def complete_versions(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> OrderedDict:
    """``tensors`` with a ``_metadata`` entry for every module of ``model``: as recorded, else the default."""
    if getattr(tensors, "_metadata", None) is None:
        return with_versions(tensors, model)
    out = OrderedDict(tensors)
    full = OrderedDict((name, dict(DEFAULT)) for name, _ in model.named_modules())
    full.update(tensors._metadata)  # type: ignore[attr-defined]
    out._metadata = full  # type: ignore[attr-defined]
    return out
