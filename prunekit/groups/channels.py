"""Channel and neuron groups of any model (the backbone), with the guards a real model needs.

:func:`backbone_groups` returns a :class:`BackboneGroups`, a ``groups_fn`` (``fn(model, example_inputs) -> groups``)
for :class:`~prunekit.engine.iterative.Engine` and :func:`~prunekit.engine.oneshot.prune`. It traces the model with
torch-pruning and keeps torch-pruning's coupling as it is (residual adds, DenseNet concatenations, depthwise and grouped
convs, SE blocks, BatchNorm / LayerNorm / GroupNorm, stray ``nn.Parameter`` s such as cls tokens, position embeddings
and layer
scales), then leaves out what must not change:

- **the model's output**: a group whose channels reach what the model returns without passing another layer with
  parameters (the classifier, a distillation head, the last norm of a feature extractor) is never pruned; found in
  the traced graph, not by name. The input's channels have no producer, so no group holds them;
- **attention projections**: in any module with ``num_heads``, the output channels of ``qkv`` / ``q`` / ``k`` / ``v``
  / ``kv`` (and their wrappers) are head-structured; pruning 2 of 96 qkv channels breaks the reshape into heads.
  Whole heads are groups of their own (``prunekit.groups.heads.head_groups``, when that module is present;
  ``heads=False`` leaves them out);
- ``ignore=``: modules, names or ``fnmatch`` patterns whose *output* channels are never pruned (their input channels
  still follow the layers before them, as in torch-pruning);
- groups torch-pruning maps inconsistently (a channel index beyond a layer's width, e.g. MLP-Mixer's token-mixing
  Linear behind a transpose), and, with ``verify=True``, groups that break the forward when pruned by one unit on a
  copy of the model (Swin's patch merging, PoolFormer's layer scale): left out, with the reason in
  :attr:`BackboneGroups.excluded`.

Every group keeps at least ``min_width`` units (default 1), moves in steps of ``round_to`` and loses at most
``max_layer_ratio`` of its original width. A model that cannot be traced raises :class:`UnsupportedModelError`
before anything is modified.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from torch import nn
from torch_pruning import ops

from ..core.group import DEFAULT_ROOT_TYPES, UnsupportedModelError

from ..core.graph import Trace, find_groups, trace
from ..core.ignore import resolve_ignore
from ..core.tpcompat import extra_root_types, recurrent_problem
from ..core.walk import DEFAULT_BUDGET, DiscoveryBudget, pruning_group
from ..core.undo import output_shapes, rekey_graph, restore, snapshot_modules
from ..core.policy import Policy
from . import ties as _ties  # noqa: F401 - registers timm's constructor ties for uniform pruning
from ..registry import PrunekitError

__all__ = ["BackboneGroups", "backbone_groups", "UnsupportedModelError", "ATTENTION_PROJECTIONS", "output_modules",
           "attention_projections"]

# children of a module with ``num_heads`` whose output channels are laid out per head
ATTENTION_PROJECTIONS = ("qkv", "q", "k", "v", "kv", "qk", "q_proj", "k_proj", "v_proj", "qkv_proj", "in_proj",
                         "to_q", "to_k", "to_v", "to_qkv", "to_kv")
_PASS_THROUGH = (ops._ElementWiseOp, ops._ReshapeOp, ops._ConcatOp, ops._SplitOp, ops._UnbindOp, ops._ExpandOp,
                 ops._SliceOp, ops._OutputOp)


def output_modules(traced: Trace) -> set:
    """Layers (and parameters) whose output channels are the model's output channels: walking back from what the
    model returns through element-wise ops, reshapes and concatenations, the first nodes with parameters."""
    found, seen = set(), set()
    stack = list(traced.output_nodes())
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, _PASS_THROUGH):
            stack.extend(node.inputs)
        else:
            found.add(node.module)
    return found


def attention_projections(model: nn.Module) -> dict[nn.Module, str]:
    """Every module (and sub-module) that projects to per-head channels, with the attention module's name: children
    named as :data:`ATTENTION_PROJECTIONS` of a module counting its heads (``num_heads``, or ``n_heads`` /
    ``num_attention_heads`` as torchvision's MaxViT and transformers name it)."""
    out: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        if not any(isinstance(getattr(m, a, None), int) for a in ("num_heads", "n_heads", "num_attention_heads")):
            continue
        for child_name, child in m.named_children():
            if child_name in ATTENTION_PROJECTIONS:
                for sub in child.modules():
                    out[sub] = name
    return out


def _heads_module():
    """``prunekit.groups.heads`` when installed alongside (attention-head groups), else None."""
    if importlib.util.find_spec(f"{__package__}.heads") is None:
        return None
    return importlib.import_module(f"{__package__}.heads")


@dataclass
class BackboneGroups:
    """A ``groups_fn`` for the channels / neurons (and attention heads) of any model; see the module docstring.

    Attributes:
        ignore: modules, names or glob patterns whose output channels are never pruned.
        min_width: units every group keeps.
        round_to: widths stay multiples of this (None: any width).
        max_layer_ratio: the most of its original width one group may lose (None: up to ``min_width``).
        heads: add attention-head groups from ``prunekit.groups.heads`` when that module exists.
        verify: prune a copy by one unit per group and run it; leave out groups that break the forward.
        forward_fn: ``fn(model, example_inputs)`` for models that need more than ``model(x)``.
        embeddings: also prune groups that hold an ``nn.Embedding``'s width (a language model's hidden size:
            every norm, embedding and projection on the residual stream at once); off by default.
        discovery: how far one group's walk of the traced graph may go; a group past it is left out (in
            ``excluded``, with what to ``ignore=``), the others are found.
        uniform: a selection over these groups keeps repeated blocks at one width (:mod:`prunekit.budget.uniform`;
            read by :func:`~prunekit.prune` and the :class:`~prunekit.Engine`).
        excluded: group name -> why it was left out, after a call.
    """

    ignore: Sequence[str | nn.Module] = ()
    min_width: int = 1
    round_to: int | None = None
    max_layer_ratio: float | None = None
    heads: bool = True
    verify: bool = True
    forward_fn: Callable | None = None
    root_types: Sequence[type] = DEFAULT_ROOT_TYPES
    embeddings: bool = False
    discovery: DiscoveryBudget = DEFAULT_BUDGET
    uniform: bool = False
    excluded: dict[str, str] = field(default_factory=dict)
    _ignore_names: list[str] = field(default_factory=list, repr=False)
    _verdicts: dict[str, str | None] = field(default_factory=dict, repr=False)
    _head_refusals: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if isinstance(self.ignore, (str, nn.Module)):
            self.ignore = (self.ignore,)
        self.ignore = tuple(self.ignore or ())
        if isinstance(self.min_width, bool) or not isinstance(self.min_width, int) or self.min_width < 1:
            raise PrunekitError(f"min_width: expected an integer >= 1 (a layer keeps at least one channel), got "
                                f"{self.min_width!r}")
        if self.max_layer_ratio is not None and not 0.0 <= self.max_layer_ratio <= 1.0:
            raise PrunekitError(f"max_layer_ratio: expected a fraction in [0, 1] of a layer's width, got "
                                f"{self.max_layer_ratio!r}")
        if not isinstance(self.discovery, DiscoveryBudget):
            raise PrunekitError(f"discovery: expected a prunekit.DiscoveryBudget(max_pairs=..., max_seconds=...), got "
                                f"{self.discovery!r}")
        # the policy checks round_to and names the field
        self.policy = Policy(min_width=self.min_width, round_to=self.round_to or 1,
                             max_ratio=1.0 if self.max_layer_ratio is None else self.max_layer_ratio)

    @property
    def group_source(self) -> tuple[str, dict[str, Any]]:
        """How to find the same groups on a freshly built model (JSON: module ignores become names)."""
        names = self._ignore_names or [i for i in self.ignore if isinstance(i, str)]
        config = {"ignore": list(names), "min_width": self.min_width, "round_to": self.round_to,
                  "max_layer_ratio": self.max_layer_ratio, "heads": self.heads}
        if self.embeddings:
            config["embeddings"] = True
        if self.uniform:
            config["uniform"] = True
        return "backbone", config

    def __call__(self, model: nn.Module, example_inputs: Any) -> list:
        ignored, self._ignore_names = resolve_ignore(model, self.ignore)
        head_groups = self._head_groups(model)
        try:
            traced = trace(model, example_inputs, forward_fn=self.forward_fn)
        except Exception as e:  # noqa: BLE001 - any tracing failure means: not prunable as it is
            raise UnsupportedModelError(f"{type(model).__name__}: torch-pruning could not trace the model on the "
                                        f"example inputs ({type(e).__name__}: {str(e)[:300]}); nothing was changed"
                                        ) from None
        protected = output_modules(traced)
        projections = attention_projections(model)
        heads_module = _heads_module()
        if heads_module is not None:  # layouts that resolve name their q / k / v layers, whatever they are called
            projections.update(heads_module.head_projections(model))
        names = traced.names
        excluded: dict[str, str] = {}
        for name, module in model.named_modules():
            why = recurrent_problem(module) if isinstance(module, nn.RNNBase) else None
            if why is not None:
                excluded[name] = f"{type(module).__name__} hidden units are not pruned: {why}"

        def per_head(module: nn.Module) -> str:
            return f"per-head channels of attention {projections[module]!r} (heads are pruned as whole heads)"

        def keep(tp_group) -> bool:
            dg = traced.dg
            root = tp_group.items[0].dep.target.module
            label = names.get(root, "?")
            for item in tp_group.items:
                module = item.dep.target.module
                is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
                if module in protected and is_out:
                    through = names.get(module, "a parameter")
                    excluded[label] = f"its channels are the model's output (through {through})"
                    return False
                if is_out and isinstance(module, nn.Embedding) and not self.embeddings:
                    excluded[label] = (f"it holds the embedding width of {names.get(module)} (the hidden size of a "
                                       "language model): pass embeddings=True to prune it")
                    return False
                if is_out and module in ignored:
                    excluded[label] = f"ignore= covers {names.get(module)}"
                    return False
                if is_out and module in projections:
                    excluded[label] = per_head(module)
                    return False
                if isinstance(module, nn.Module) and item.idxs:
                    width = dg.get_out_channels(module) if is_out else dg.get_in_channels(module)
                    if width is not None and max(item.idxs) >= width:
                        excluded[label] = (f"torch-pruning maps {len(item.idxs)} channels onto {width} of "
                                           f"{names.get(module)} (an op it does not understand, e.g. a transpose)")
                        return False
            return True

        def may_root(name: str, module: nn.Module) -> bool:  # decided before walking the graph from it
            if module in projections:
                excluded[name] = per_head(module)
                return False
            return True

        # layers torch-pruning learns from prunekit's pruners (transformers' Conv1D) root groups like a Linear
        root_types = tuple(self.root_types) + extra_root_types(model)
        groups = find_groups(model, traced=traced, root_types=root_types, policy=self.policy, keep=keep,
                             on_skip=excluded.__setitem__, budget=self.discovery, roots=may_root)
        broken = self._verify(model, example_inputs, groups) if self.verify else self._known_broken()
        excluded.update({n: r for n, r in broken.items() if any(g.name == n for g in groups)})
        groups = [g for g in groups if g.name not in broken]
        excluded.update(self._head_refusals)
        self.excluded = excluded
        return groups + head_groups

    def _head_groups(self, model: nn.Module) -> list:
        """``prunekit.groups.heads.head_groups``; attention modules it refuses keep their heads (recorded in
        ``excluded``)."""
        self._head_refusals = {}
        if not self.heads:
            return []
        heads = _heads_module()
        if heads is None:
            return []
        ignore = list(self.ignore)
        try:
            return list(heads.head_groups(model, ignore=ignore or None, min_heads=self.min_width))
        except PrunekitError as e:
            supported = set(heads.attention_modules(model))
            refused = [n for n, m in model.named_modules() if n and isinstance(getattr(m, "num_heads", None), int)
                       and n not in supported]
            for n in refused:
                self._head_refusals[f"{n}.heads"] = f"prunekit.groups.heads refuses its layout ({str(e).split(':')[0]})"
            return list(heads.head_groups(model, ignore=ignore + refused, min_heads=self.min_width))

    def _verify(self, model: nn.Module, example_inputs: Any, groups: list) -> dict[str, str]:
        """Groups that break the forward when pruned by one unit, found on a copy of the model (cached by name)."""
        todo = {g.name: [g.width - 1] for g in groups if g.name not in self._verdicts
                and g.width > self.policy.lowest(g.width)}
        if todo:
            self._verdicts.update(_probe(model, example_inputs, todo, self))
        return {n: r for n, r in self._verdicts.items() if r is not None and any(g.name == n for g in groups)}

    def exclude_breaking(self, model: nn.Module, example_inputs: Any,
                         removals: dict[str, list[int]] | None = None) -> dict[str, str]:
        """Find, on a copy, the groups whose removals (default: one unit each) break the forward, and leave them out
        of every later call; returns them with the reasons."""
        if removals is None:
            removals = {g.name: [g.width - 1] for g in self(model, example_inputs) if g.width > 1}
        verdict = _probe(model, example_inputs, removals, self)
        broken = {n: r for n, r in verdict.items() if r is not None}
        self._verdicts.update(broken)
        return broken

    def _known_broken(self) -> dict[str, str]:
        return {n: r for n, r in self._verdicts.items() if r is not None}


def backbone_groups(
        *,
        ignore: Iterable[str | nn.Module] | None = None,
        min_width: int = 1,
        round_to: int | None = None,
        max_layer_ratio: float | None = None,
        heads: bool = True,
        verify: bool = True,
        forward_fn: Callable | None = None,
        embeddings: bool = False,
        discovery: DiscoveryBudget = DEFAULT_BUDGET,
        uniform: bool = False,
) -> BackboneGroups:
    """A ``groups_fn`` for any model's channels: ``backbone_groups(round_to=8)(model, x)`` lists the groups,
    ``Engine(..., groups_fn=backbone_groups(ignore=['stem.*']))`` prunes them iteratively (module docstring)."""
    return BackboneGroups(ignore=tuple(ignore or ()), min_width=min_width, round_to=round_to,
                          max_layer_ratio=max_layer_ratio, heads=heads, verify=verify, forward_fn=forward_fn,
                          embeddings=embeddings, discovery=discovery, uniform=uniform)




# ---------------------------------------------------------------------------------------------------------------
# The forward probe

def _probe(model: nn.Module, example_inputs: Any, removals: dict[str, list[int]],
           config: BackboneGroups) -> dict[str, str | None]:
    """Remove ``removals[name]`` (unit indices) from those groups of a copy of ``model``, all at once; when the
    forward then fails or changes the output shape, find the culprits group by group (undoing each failed one).
    Groups the copy does not have as channel groups (attention heads) are not probed. Returns name -> reason or
    None."""
    forward_fn = config.forward_fn
    reference = output_shapes(model, example_inputs, forward_fn)
    probe = copy.deepcopy(model)
    probe.eval()
    quiet = BackboneGroups(ignore=config._ignore_names, min_width=config.min_width, heads=False, verify=False,
                           forward_fn=forward_fn)
    groups = {g.name: g for g in quiet(probe, example_inputs) if g.name in removals}
    verdict: dict[str, str | None] = {n: None for n in groups}

    def runs() -> str | None:
        try:
            shapes = output_shapes(probe, example_inputs, forward_fn)
        except Exception as e:  # noqa: BLE001 - any failure of the pruned copy disqualifies the group
            return f"pruning it breaks the forward ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        if shapes != reference:
            return f"pruning it changes the output shape ({shapes} instead of {reference})"
        return None

    if not groups:
        return verdict
    dg = next(iter(groups.values()))._dg
    saved = snapshot_modules(m for g in groups.values() for m in _touched(g))
    try:
        for name, g in groups.items():
            g.prune(removals[name])
        if runs() is None:
            return verdict
    except Exception:  # noqa: BLE001 - a pruning function failing is found group by group below
        pass
    _undo(dg, saved)
    for name, g in groups.items():
        saved = snapshot_modules(_touched(g))
        try:
            g.prune(removals[name])
            reason = runs()
        except Exception as e:  # noqa: BLE001
            reason = f"torch-pruning cannot slice it ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        if reason is not None:
            verdict[name] = reason
            _undo(dg, saved)
    return verdict


def _undo(dg, saved) -> None:
    rekey_graph(dg, saved)
    restore(None, saved)


def _touched(group) -> list[nn.Module]:
    """Every module whose tensors or attributes pruning ``group`` changes (members and stray parameters' owners)."""
    mods = list(group.modules) + [s.owner for s in group.slices]
    every = group.channels(range(group.width))
    for item in pruning_group(group._dg, group.root, group._handler, every).items:
        if isinstance(item.dep.target.module, nn.Module):
            mods.append(item.dep.target.module)
    return list({id(m): m for m in mods}.values())
