"""Recipes: strict, validated YAML run configurations.

A recipe is a tree of dataclasses (below). Loading is strict: an unknown key or a wrong type fails with the key's YAML
path, the value and what is allowed (``train.lr: expected a float, got 'fast'``; ``trian: unknown key; did you mean
'train'?``). ``--set a.b=c`` overrides are parsed as YAML values and checked the same way. Every field carries a
``help`` text; ``docs/recipes.md`` documents each one (a test keeps the two in step).

The ``method`` section is open: its keys depend on ``method.name`` and are checked against that method's own config
(see :mod:`prunekit.methods`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml

from .registry import PrunekitError, did_you_mean

__all__ = ["Recipe", "RecipeError", "load_recipe", "read_yaml", "parse_section", "apply_overrides", "recipe_to_dict",
           "ModelSection", "StrategySection", "DataSection", "TrainSection", "OutputSection", "MAX_YAML_VALUES",
           "SEED_MAX"]

MAX_YAML_VALUES = 100_000  # a recipe holds a few hundred values; anchors and aliases may not expand beyond this
SEED_MAX = 2**32 - 1  # NumPy's legacy seeding (np.random.seed) takes 0 .. 2**32 - 1; torch takes more


class RecipeError(PrunekitError, ValueError):
    """A recipe that does not validate; the message starts with the offending key's path."""


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


def _check_count(path: str, value: Optional[int], minimum: int, unset: Optional[str] = None) -> None:
    """``value`` >= ``minimum``; None is allowed (and means ``unset``) only when ``unset`` says what it means."""
    if value is None and unset is not None:
        return
    if value is None or value < minimum:
        null = f" or null ({unset})" if unset else ""
        raise RecipeError(f"{path}: expected an integer >= {minimum}{null}, got {value}")


@dataclass
class ModelSection:
    name: str = field(**_help("timm model name, e.g. swin_tiny_patch4_window7_224", default="vit_tiny_patch16_224"))
    pretrained: bool = field(**_help("load timm hub weights (needs internet)", default=False))
    checkpoint: Optional[str] = field(**_help(
        "backbone weights file (.safetensors, .pth/.pt/.bin; a timm, prunekit or plain state dict); '~' expands",
        default=None))
    pretrain: Optional[str] = field(**_help(
        "recipe to run first when `checkpoint` does not exist yet (its run writes the checkpoint); a path relative "
        "to this recipe's folder", default=None))
    reset_head: bool = field(**_help("start the task with a new classifier head even when the checkpoint's head has "
                                     "the right shape", default=True))
    img_size: int = field(**_help("input resolution in pixels (images are resized to it)", default=224))
    in_chans: int = field(**_help("input channels of the backbone (>= 1)", default=3))
    kwargs: dict = field(**_help("extra keyword arguments for timm.create_model (patch_size, embed_dim, depth, ...)",
                                 default_factory=dict))
    allow_random_backbone: bool = field(**_help(
        "train a method that freezes the backbone (adapters, lora, bitfit, vpt, linear, ...) on randomly "
        "initialised weights (no checkpoint and pretrained: false); refused unless true (tests, smoke runs)",
        default=False))

    def __post_init__(self):
        _check_count("model.in_chans", self.in_chans, 1)
        if self.pretrain and not self.checkpoint:
            raise RecipeError(f"model.pretrain: {self.pretrain!r} runs only to write model.checkpoint, which is not "
                              "set; set model.checkpoint to the file the pretraining recipe writes")


@dataclass
class StrategySection:
    name: str = field(**_help("registered strategy (`prunekit list strategies`), or 'none' to train without "
                              "pruning", default="tina"))
    rho: float = field(**_help("fraction of the remaining neurons removed at each prune, in (0, 1)", default=0.5))
    sigma_target: float = field(**_help("compression sum(m_i) / sum(n_i) to reach; above the method's sigma",
                                        default=512.0))
    sigma_reference: float = field(**_help("one-shot strategies train as many cycles as an iterative run from this "
                                           "compression", default=32.0))
    cycles: Optional[int] = field(**_help(
        "training cycles: with strategy 'none' how many to train (default 1; baselines use 5 to match TINA's "
        "budget); otherwise computed from sigma, sigma_target and rho and, when set, checked against that",
        default=None))
    calibration_batches: int = field(**_help("training batches used to measure activations for activation-based "
                                             "scorers", default=8))


@dataclass
class DataSection:
    name: str = field(**_help("dataset (`prunekit list datasets`)", default="digits"))
    root: Optional[str] = field(**_help("where the files are (torchvision sets, image folders, Fashion-MNIST idx "
                                        "files); '~' expands", default=None))
    download: bool = field(**_help("let torchvision download the dataset when it is missing", default=False))
    domain: Optional[str] = field(**_help("DomainNet domain (clipart, infograph, painting, quickdraw, real, "
                                          "sketch)", default=None))
    val_fraction: float = field(**_help("share of a bundled set held out for validation", default=0.2))
    limit_train: Optional[int] = field(**_help("use only the first N >= 1 training images (smoke tests; null: all)",
                                               default=None))
    limit_val: Optional[int] = field(**_help("use only the first N >= 1 validation images (null: all)", default=None))
    num_workers: int = field(**_help("DataLoader worker processes (0 = load in the main process)", default=0))
    augment: bool = field(**_help("random horizontal flips and crops for natural-image sets; ignored for digits",
                                  default=True))
    skip_unreadable: bool = field(**_help(
        "image files (imagefolder, domainnet) that cannot be read are left out, counted and reported in a "
        "warning; false (default): a run refuses to start and names them", default=False))

    def __post_init__(self):
        _check_count("data.limit_train", self.limit_train, 1, "every training image")
        _check_count("data.limit_val", self.limit_val, 1, "every validation image")
        _check_count("data.num_workers", self.num_workers, 0)


@dataclass
class TrainSection:
    optimizer: Literal["adamw", "sgd"] = field(**_help("optimizer", default="adamw"))
    lr: float = field(**_help("peak learning rate", default=1e-3))
    min_lr: float = field(**_help("learning rate at the end of the cosine decay", default=0.0))
    weight_decay: float = field(**_help("decoupled weight decay (AdamW)", default=1e-4))
    momentum: float = field(**_help("SGD momentum", default=0.9))
    epochs: int = field(**_help("epochs per cycle (the paper: 100)", default=100))
    warmup_epochs: int = field(**_help("linear warm-up epochs at the start of every cycle (the paper: 20)",
                                       default=20))
    batch_size: int = field(**_help("images per optimisation step, over all processes under torchrun (the global "
                                    "batch: a recipe trains the same on 1 or N GPUs)", default=64))
    eval_batch_size: Optional[int] = field(**_help("images per evaluation step, >= 1 (null: 2 x batch_size)",
                                                   default=None))
    label_smoothing: float = field(**_help("cross-entropy label smoothing", default=0.0))
    grad_clip: Optional[float] = field(**_help("clip the gradient norm to this value (> 0; null: no clipping)",
                                               default=None))
    precision: Literal["auto", "fp32", "bf16"] = field(**_help(
        "bf16 autocast where the device supports it (auto: bf16 on CUDA with bf16 support, else fp32)",
        default="auto"))
    device: str = field(**_help("'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'", default="auto"))
    seed: int = field(**_help("seeds Python, NumPy, torch and the data order; 0 .. 2**32 - 1", default=0))
    deterministic: bool = field(**_help("use deterministic algorithms (CPU runs repeat exactly)", default=True))
    max_steps_per_epoch: Optional[int] = field(**_help("stop an epoch after N >= 1 steps (smoke tests; null: the "
                                                       "whole training set)", default=None))

    def __post_init__(self):
        _check_count("train.eval_batch_size", self.eval_batch_size, 1, "2 x train.batch_size")
        _check_count("train.max_steps_per_epoch", self.max_steps_per_epoch, 1, "the whole training set")
        if not 0 <= self.seed <= SEED_MAX:
            raise RecipeError(f"train.seed: expected an integer in 0 .. {SEED_MAX} (2**32 - 1, the range NumPy's "
                              f"seeding takes), got {self.seed}")
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise RecipeError(f"train.grad_clip: expected a finite number > 0 or null (no clipping), got "
                              f"{self.grad_clip}")

    @property
    def eval_batch(self) -> int:
        """Images per evaluation step: ``eval_batch_size``, or twice ``batch_size`` when it is unset (None)."""
        return 2 * self.batch_size if self.eval_batch_size is None else self.eval_batch_size


@dataclass
class OutputSection:
    dir: str = field(**_help("parent folder of run directories (relative to the working directory)",
                             default="runs"))
    run_name: Optional[str] = field(**_help("run directory name (default: the recipe's name)", default=None))
    save_adapters: bool = field(**_help("write the trained parameters (adapters + head) of every cycle as "
                                        ".safetensors", default=True))
    save_checkpoint: Optional[str] = field(**_help(
        "also write the whole model's weights here at the end (how a pretraining recipe produces a backbone); "
        "'~' expands", default=None))
    replace_checkpoint: bool = field(**_help(
        "let save_checkpoint replace an existing file prunekit did not write (without it such a file is refused "
        "before training; files prunekit wrote carry a mark in their safetensors metadata and are replaced)",
        default=False))
    plot: bool = field(**_help("draw neurons per adapter per cycle (PNG, the paper's Fig. 4)", default=True))
    save_state: bool = field(**_help(
        "write resume.pt (trained weights, optimizer, RNG, cycle) after every epoch so `prunekit run --resume "
        "RUN_DIR` continues an interrupted run; false saves the write (full fine-tuning of a large model)",
        default=True))


@dataclass
class Recipe:
    name: str = field(**_help("run name (default: the file name)", default="run"))
    description: str = field(**_help("free text shown by `prunekit list recipes`", default=""))
    model: ModelSection = field(**_help("the backbone", default_factory=ModelSection))
    method: dict = field(**_help("what is trained: `name` (see `prunekit list methods`) and that method's keys",
                                 default_factory=lambda: {"name": "adapters"}))
    strategy: StrategySection = field(**_help("how adapters are pruned", default_factory=StrategySection))
    data: DataSection = field(**_help("the downstream task", default_factory=DataSection))
    train: TrainSection = field(**_help("the training loop", default_factory=TrainSection))
    output: OutputSection = field(**_help("what a run writes", default_factory=OutputSection))
    source: Optional[str] = field(default=None, metadata={"help": "file the recipe was read from (set on load)",
                                                          "internal": True})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Cross-field checks (types were checked while parsing)."""
        s, t, d = self.strategy, self.train, self.data
        if not 0.0 < s.rho < 1.0:
            raise RecipeError(f"strategy.rho: expected a fraction in (0, 1), got {s.rho}")
        if s.cycles is not None and s.cycles < 1:
            raise RecipeError(f"strategy.cycles: expected an integer >= 1, got {s.cycles}")
        if s.name == "none" and s.cycles is None:
            s.cycles = 1
        if not s.sigma_target > 0 or not math.isfinite(s.sigma_target):
            raise RecipeError(f"strategy.sigma_target: expected a finite number > 0, got {s.sigma_target}")
        if s.calibration_batches < 1:
            raise RecipeError(f"strategy.calibration_batches: expected an integer >= 1, got {s.calibration_batches}")
        for key in ("lr", "weight_decay", "min_lr", "label_smoothing"):
            value = getattr(t, key)
            if value < 0 or not math.isfinite(value):
                raise RecipeError(f"train.{key}: expected a finite number >= 0, got {value}")
        if not t.lr > 0:
            raise RecipeError(f"train.lr: expected a number > 0, got {t.lr}")
        if t.epochs < 1:
            raise RecipeError(f"train.epochs: expected an integer >= 1, got {t.epochs}")
        if not 0 <= t.warmup_epochs <= t.epochs:
            raise RecipeError(f"train.warmup_epochs: expected 0..train.epochs ({t.epochs}), got {t.warmup_epochs}")
        if t.batch_size < 1:
            raise RecipeError(f"train.batch_size: expected an integer >= 1, got {t.batch_size}")
        if not 0.0 < d.val_fraction < 1.0:
            raise RecipeError(f"data.val_fraction: expected a fraction in (0, 1), got {d.val_fraction}")
        if self.model.img_size < 8:
            raise RecipeError(f"model.img_size: expected at least 8 pixels, got {self.model.img_size}")
        if not isinstance(self.method.get("name"), str):
            raise RecipeError(f"method.name: expected a method name, got {self.method.get('name')!r}")

    @property
    def method_name(self) -> str:
        return self.method["name"]


# --------------------------------------------------------------------------------------------------------------------
# strict parsing

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise RecipeError(f"{path}: expected {_type_name(tp)}, got {value!r};"
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
            raise RecipeError(f"{path}: expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise RecipeError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise RecipeError(f"{path}: expected a float, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{path}: expected a float, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(tp) is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (object,)
        return [v if item is object else _convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def parse_section(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types raise :class:`RecipeError`)."""
    where = path or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            allowed = f"allowed in {where}: {', '.join(fields)}" if fields else f"{where} takes no keys here"
            raise RecipeError(f"{key_path}: unknown key;{did_you_mean(str(key), list(fields))} {allowed}")
        kwargs[key] = _convert(value, hints[key], key_path)
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None


def _parse_value(text: str, key: str) -> Any:
    try:
        return _safe_load_bounded(text, f"--set {key}", key)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``['train.lr=0.01', 'method.sigma=8']`` applied to a raw recipe mapping (values are YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.path=value, e.g. train.lr=0.001")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise RecipeError(f"--set {item!r}: empty key in {key!r}")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"--set {'.'.join(parts[:i + 1])}: is {nxt!r}, not a section")
            node = nxt
        value = _parse_value(raw, key.strip())
        if parts == ["method"] and isinstance(value, str):  # --set method=lora: switch the method, keep nothing else
            value = {"name": value}
        node[parts[-1]] = value
    return data


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
        raise RecipeError(f"{what}: cannot read {str(path)!r} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise RecipeError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}, byte offset {e.start}); "
                          f"save the {what} as UTF-8") from None
    try:
        return _safe_load_bounded(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None


def _safe_load_bounded(text: str, source: str, prefix: str = "") -> Any:
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
        raise RecipeError(f"{source}: YAML nested too deeply to read (thousands of levels of [ or {{)") from None
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
            raise RecipeError(f"{where or source}: a YAML alias refers to the anchor it sits in (line "
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
    raise RecipeError(f"{where or source}: YAML anchors and aliases expand to {sizes[id(node)]:,} values, more than "
                      f"the {MAX_YAML_VALUES:,} a recipe may hold (an alias bomb, 'billion laughs'?); write the "
                      f"values out or use fewer aliases")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe: no such file {str(path)!r}")
    data = read_yaml(path, "recipe")
    if data is None:
        raise RecipeError(f"recipe {str(path)!r} is empty (no YAML document); a recipe names at least its model, "
                          f"method and data (see recipes/quickstart.yaml)")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of sections (model:, method:, data:, ...) at the top level, "
                          f"got {_kind(data)} {_short(data)}")
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    recipe = parse_section(Recipe, data)
    recipe.source = str(path.resolve())
    return recipe


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "an integer", float: "a float", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def recipe_to_dict(recipe: Recipe) -> dict:
    d = dataclasses.asdict(recipe)
    d.pop("source", None)
    return d


def field_docs(cls=Recipe, prefix: str = "") -> list[tuple[str, str, str, Any]]:
    """(path, type, help, default) of every recipe key, for documentation."""
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
        rows.append((path, _type_name(tp), f.metadata.get("help", ""), default))
    return rows
