"""The sections of a recipe: one dataclass each (``model``, ``strategy`` with its ``budget`` and ``backbone``,
``data``, ``train``, ``output``, ``resolved``), every field with its type, default and ``help`` text.

``docs/recipes.md`` documents each field (a test keeps the two in step); :class:`~prunekit.recipe.spec.Recipe` holds
them and loads them strictly. The ``method`` section is not here: its keys are the chosen method's own config
(:mod:`prunekit.methods`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional


from ..config import check_all, check_count, option
from ..errors import ConfigError

__all__ = ["ModelSection", "StrategySection", "BudgetSection", "BackboneSection",
           "DataSection", "DistillSection", "TrainSection", "OutputSection", "ResolvedSection", "SEED_MAX", "SHIFTS"]

SEED_MAX = 2**32 - 1  # NumPy's legacy seeding (np.random.seed) takes 0 .. 2**32 - 1; torch takes more
SHIFTS = Literal["invert", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose"]  # data.shift (dataviews.py)


@dataclass
class ModelSection:
    name: str = field(**option("timm model name, e.g. swin_tiny_patch4_window7_224, or a registered model builder "
                               "(`prunekit list models`)", default="vit_tiny_patch16_224"))
    pretrained: bool = field(**option("load timm hub weights (needs internet)", default=False))
    checkpoint: Optional[str] = field(**option(
        "backbone weights file (.safetensors, .pth/.pt/.bin; a timm, prunekit or plain state dict); '~' expands",
        default=None))
    pretrain: Optional[str] = field(**option(
        "recipe to run first when `checkpoint` does not exist yet (its run writes the checkpoint); a path relative "
        "to this recipe's folder", default=None))
    reset_head: bool = field(**option("start the task with a new classifier head even when the checkpoint's head has "
                                      "the right shape", default=True))
    img_size: int = field(**option("input resolution in pixels (images are resized to it)", default=224))
    in_chans: int = field(**option("input channels of the backbone (>= 1)", default=3))
    kwargs: dict = field(**option("extra keyword arguments for timm.create_model (patch_size, embed_dim, depth, ...)",
                                  default_factory=dict))
    allow_random_backbone: bool = field(**option(
        "train a method that freezes the backbone (adapters, lora, bitfit, vpt, linear, ...) on randomly "
        "initialised weights (no checkpoint and pretrained: false); refused unless true (tests, smoke runs)",
        default=False))

    def __post_init__(self):
        check_all(lambda: check_count("model.in_chans", self.in_chans, 1), self._check_size, self._check_pretrain)

    def _check_size(self) -> None:
        if self.img_size < 8:
            raise ConfigError(f"model.img_size: expected at least 8 pixels, got {self.img_size}")

    def _check_pretrain(self) -> None:
        if self.pretrain and not self.checkpoint:
            raise ConfigError(f"model.pretrain: {self.pretrain!r} runs only to write model.checkpoint, which is not "
                              "set; set model.checkpoint to the file the pretraining recipe writes")


@dataclass
class BudgetSection:
    """What a prune must reach, as a fraction of the model to remove; at most one key (none: ``sigma_target``)."""

    params: Optional[float] = field(**option(
        "fraction of the whole model's parameters to remove, in (0, 1) (the classifier and unpruned layers count)",
        default=None))
    macs: Optional[float] = field(**option(
        "fraction of the whole model's MACs to remove, in (0, 1): one forward of one model.img_size image, counted "
        "by torch-pruning", default=None))
    channels: Optional[float] = field(**option(
        "fraction of the prunable units to remove, in (0, 1): channels, neurons and heads (strategy.groups "
        "backbone) or adapter neurons", default=None))
    latency: Optional[float] = field(**option(
        "fraction of the model's measured forward time to remove, in (0, 1): one model.img_size image on the run's "
        "device (train.device), timed per group at a few widths (prunekit.budget.latency)", default=None))

    def __post_init__(self):
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for kind, value in given.items():
            if not (0.0 < value < 1.0):
                raise ConfigError(f"strategy.budget.{kind}: expected the fraction of the model's {kind} to remove, "
                                  f"in (0, 1), got {value:g} (0.5 removes half)")
        if len(given) > 1:
            raise ConfigError(f"strategy.budget: expected one of params, macs, channels, latency, got {len(given)} "
                              f"({', '.join(f'{k}: {v:g}' for k, v in given.items())}); keep the one to reach")

    @property
    def kind(self) -> Optional[str]:
        """``'params'``, ``'macs'``, ``'channels'``, ``'latency'`` or None (the adapters' sigma_target)."""
        return next((k for k, v in dataclasses.asdict(self).items() if v is not None), None)

    @property
    def value(self) -> Optional[float]:
        kind = self.kind
        return None if kind is None else getattr(self, kind)


@dataclass
class BackboneSection:
    """How ``strategy.groups: backbone`` finds the groups (``prunekit.backbone_groups``)."""

    heads: bool = field(**option("prune whole attention heads too (timm ViT / DeiT / Swin / PVT-v2 attention and "
                                 "any module with num_heads and qkv + proj Linears)", default=True))
    ignore: list[str] = field(**option(
        "modules (names or glob patterns, e.g. patch_embed.proj, 'stem.*') whose output channels are kept; the "
        "classifier and whatever feeds the model's output are always kept", default_factory=list))
    min_width: int = field(**option("units every group keeps (channels, neurons, heads), >= 1", default=1))
    round_to: Optional[int] = field(**option("keep every width a multiple of this, >= 1 (8 suits tensor cores); "
                                             "null: any width", default=None))
    max_layer_ratio: Optional[float] = field(**option(
        "the most one group may lose over the run, as a fraction of its width, in [0, 1] (null: down to min_width)",
        default=None))
    uniform: bool = field(**option(
        "keep every repeated block at one width (the same heads per attention, MLP width per block), so the pruned "
        "model's config / timm constructor describes it and it reloads without prunekit", default=False))

    def __post_init__(self):
        check_count("strategy.backbone.min_width", self.min_width, 1)
        check_count("strategy.backbone.round_to", self.round_to, 1, "any width")
        if self.max_layer_ratio is not None and not 0.0 <= self.max_layer_ratio <= 1.0:
            raise ConfigError(f"strategy.backbone.max_layer_ratio: expected a fraction in [0, 1] of a group's width "
                              f"or null, got {self.max_layer_ratio:g}")


@dataclass
class StrategySection:
    name: str = field(**option("registered strategy (`prunekit list strategies`), or 'none' to train without "
                               "pruning", default="tina"))
    groups: Literal["adapters", "backbone"] = field(**option(
        "what is pruned: 'adapters' (the method's adapter neurons; TINA) or 'backbone' (the model's own channels, "
        "MLP neurons and attention heads; needs a method that trains the backbone: full)", default="adapters"))
    rho: float = field(**option("fraction of the remaining neurons (with strategy.budget: of what is left of its "
                                "measure) removed at each prune, in (0, 1)", default=0.5))
    sigma_target: float = field(**option("compression sum(m_i) / sum(n_i) to reach; above the method's sigma "
                                         "(the budget when strategy.budget sets none)", default=512.0))
    budget: BudgetSection = field(**option(
        "what the last prune reaches: one of params / macs / channels / latency, a fraction of the model to remove "
        "(null: the adapters' sigma_target)", default_factory=BudgetSection))
    backbone: BackboneSection = field(**option("which of the backbone's groups strategy.groups: backbone prunes",
                                               default_factory=BackboneSection))
    sigma_reference: Optional[float] = field(**option(
        "one-shot strategies train as many cycles as an iterative run from this compression to sigma_target (null: "
        "method.sigma, where the recipe's adapters start, so a one-shot run trains as long as the iterative one)",
        default=None))
    cycles: Optional[int] = field(**option(
        "training cycles: with strategy 'none' how many to train (default 1; baselines use 5 to match TINA's "
        "budget); otherwise computed from sigma, sigma_target (or strategy.budget) and rho and, when set, checked "
        "against that",
        default=None))
    calibration_batches: int = field(**option("training batches (in order) that activation scorers measure "
                                              "activations on and gradient (Taylor) scorers gradients on",
                                              default=8))
    scorer: Optional[str] = field(**option(
        "replaces the strategy's scorer: a registered name (`prunekit list scorers`) or 'package.module:function' "
        "(null: the strategy's own)", default=None))
    scope: Optional[str] = field(**option(
        "replaces the strategy's scope: a registered name (`prunekit list scopes`) or 'package.module:function' "
        "(null: the strategy's own)", default=None))
    mode: Optional[Literal["iterative", "oneshot"]] = field(**option(
        "replaces the strategy's schedule mode (null: the strategy's own)", default=None))

    def __post_init__(self):
        problems = []
        if not 0.0 < self.rho < 1.0:
            problems.append(f"strategy.rho: expected a fraction in (0, 1), got {self.rho}")
        if self.cycles is not None and self.cycles < 1:
            problems.append(f"strategy.cycles: expected an integer >= 1, got {self.cycles}")
        if self.name == "none" and self.cycles is None:
            self.cycles = 1
        if not self.sigma_target > 0 or not math.isfinite(self.sigma_target):
            problems.append(f"strategy.sigma_target: expected a finite number > 0, got {self.sigma_target}")
        if self.sigma_reference is not None and not (self.sigma_reference > 0 and math.isfinite(self.sigma_reference)):
            problems.append(f"strategy.sigma_reference: expected a finite number > 0 or null (method.sigma), got "
                            f"{self.sigma_reference}")
        if self.calibration_batches < 1:
            problems.append(f"strategy.calibration_batches: expected an integer >= 1, got {self.calibration_batches}")
        if problems:
            raise ConfigError(*problems)


@dataclass
class DataSection:
    name: str = field(**option("dataset (`prunekit list datasets`)", default="digits"))
    root: Optional[str] = field(**option("where the files are (torchvision sets, image folders, Fashion-MNIST idx "
                                         "files); '~' expands", default=None))
    download: bool = field(**option("let torchvision download the dataset when it is missing", default=False))
    domain: Optional[str] = field(**option("DomainNet domain (clipart, infograph, painting, quickdraw, real, "
                                           "sketch)", default=None))
    val_fraction: float = field(**option("share of a bundled set held out for validation", default=0.2))
    split_seed: Optional[int] = field(**option(
        "seed of a bundled set's train / validation split and of the train_size / val_size subsets (null: "
        "train.seed, so every seed splits anew); set it to keep one split for every train.seed", default=None))
    classes: Optional[list[int]] = field(**option(
        "keep only these class indices, relabelled 0, 1, ... in the order given (a class split of a task, e.g. "
        "Fashion-MNIST's held-out classes; null: every class)", default=None))
    shift: list[SHIFTS] = field(**option(
        "input shifts applied to every image of a grey-scale set, in order (a shifted task): invert (255 - x), "
        "rot90 / rot180 / rot270 (counter-clockwise), hflip, vflip, transpose", default_factory=list))
    train_size: Optional[int] = field(**option(
        "a fixed random subset of N >= 1 training images, stratified by class and drawn with split_seed, so every "
        "train.seed trains on the same images (null: all)", default=None))
    val_size: Optional[int] = field(**option("the same for the validation images (null: all)", default=None))
    limit_train: Optional[int] = field(**option("use only the first N >= 1 training images (smoke tests; null: all)",
                                                default=None))
    limit_val: Optional[int] = field(**option("use only the first N >= 1 validation images (null: all)", default=None))
    num_workers: int = field(**option("DataLoader worker processes (0 = load in the main process)", default=0))
    augment: bool = field(**option(
        "random horizontal flips of training images for the natural-image sets (torchvision sets, imagefolder, "
        "domainnet); no crops (images are resized to model.img_size); the grey sets (mnist5k, digits, fashion_mnist) "
        "are not augmented", default=True))
    skip_unreadable: bool = field(**option(
        "image files (imagefolder, domainnet) that cannot be read are left out, counted and reported in a "
        "warning; false (default): a run refuses to start and names them", default=False))

    def __post_init__(self):
        check_all(lambda: check_count("data.limit_train", self.limit_train, 1, "every training image"),
                  lambda: check_count("data.limit_val", self.limit_val, 1, "every validation image"),
                  lambda: check_count("data.num_workers", self.num_workers, 0), self._check_fraction,
                  lambda: check_count("data.train_size", self.train_size, 1, "every training image"),
                  lambda: check_count("data.val_size", self.val_size, 1, "every validation image"),
                  self._check_split_seed, self._check_classes)

    def _check_fraction(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: expected a fraction in (0, 1), got {self.val_fraction}")

    def _check_split_seed(self) -> None:
        if self.split_seed is not None and not 0 <= self.split_seed <= SEED_MAX:
            raise ConfigError(f"data.split_seed: expected an integer in 0 .. {SEED_MAX} or null (train.seed), got "
                              f"{self.split_seed}")

    def _check_classes(self) -> None:
        if self.classes is not None:
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if len(self.classes) < 2 or dupes or min(self.classes) < 0:
                why = f"repeats {dupes}" if dupes else f"got {self.classes}"
                raise ConfigError(f"data.classes: expected a list of at least 2 distinct class indices >= 0 (or null: "
                                  f"every class); {why}")


@dataclass
class DistillSection:
    """Knowledge distillation while the pruned model recovers (``prunekit.engine.distill``); off while ``teacher`` is
    null."""

    teacher: Optional[str] = field(**option(
        "'unpruned' (the model as it was just before the first prune: an adapters run's sigma_0 model, a backbone "
        "run's unpruned network) or a checkpoint file of the same task (the backbone with its trained head, as "
        "model.checkpoint reads it); null: no distillation", default=None))
    alpha: float = field(**option("weight of the soft term, in [0, 1]: loss = (1 - alpha) CE + alpha T^2 KL of the "
                                  "teacher's softened outputs from the student's", default=0.5))
    temperature: float = field(**option("softmax temperature T of both distributions, > 0", default=4.0))

    def __post_init__(self):
        problems = []
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"train.distill.alpha: expected a weight in [0, 1], got {self.alpha:g}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"train.distill.temperature: expected a finite number > 0, got {self.temperature:g}")
        if self.teacher is not None and not self.teacher.strip():
            problems.append("train.distill.teacher: expected 'unpruned', a checkpoint file or null, got ''")
        if problems:
            raise ConfigError(*problems)


@dataclass
class TrainSection:
    optimizer: Literal["adamw", "sgd"] = field(**option("optimizer", default="adamw"))
    lr: float = field(**option("peak learning rate", default=1e-3))
    min_lr: float = field(**option("learning rate at the end of the cosine decay", default=0.0))
    weight_decay: float = field(**option("decoupled weight decay (AdamW)", default=1e-4))
    momentum: float = field(**option("SGD momentum", default=0.9))
    epochs: int = field(**option("epochs per cycle (the paper: 100)", default=100))
    warmup_epochs: int = field(**option("linear warm-up epochs at the start of every cycle (the paper: 20)",
                                        default=20))
    batch_size: int = field(**option("images per optimisation step, over all processes under torchrun (the global "
                                     "batch: a recipe trains the same on 1 or N GPUs)", default=64))
    eval_batch_size: Optional[int] = field(**option("images per evaluation step, >= 1 (null: 2 x batch_size)",
                                                    default=None))
    label_smoothing: float = field(**option("cross-entropy label smoothing", default=0.0))
    grad_clip: Optional[float] = field(**option("clip the gradient norm to this value (> 0; null: no clipping)",
                                                default=None))
    precision: Literal["auto", "fp32", "bf16"] = field(**option(
        "bf16 autocast where the device supports it (auto: bf16 on CUDA with bf16 support, else fp32)",
        default="auto"))
    device: str = field(**option("'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'", default="auto"))
    seed: int = field(**option("seeds Python, NumPy, torch and the data order; 0 .. 2**32 - 1", default=0))
    deterministic: bool = field(**option("use deterministic algorithms (CPU runs repeat exactly)", default=True))
    max_steps_per_epoch: Optional[int] = field(**option("stop an epoch after N >= 1 steps (smoke tests; null: the "
                                                        "whole training set)", default=None))
    distill: DistillSection = field(**option("distil from a teacher in the cycles after a prune",
                                             default_factory=DistillSection))

    def __post_init__(self):
        check_all(lambda: check_count("train.eval_batch_size", self.eval_batch_size, 1, "2 x train.batch_size"),
                  lambda: check_count("train.max_steps_per_epoch", self.max_steps_per_epoch, 1,
                                      "the whole training set"),
                  self._check_values)

    def _check_values(self) -> None:
        problems = []
        for key in ("lr", "weight_decay", "min_lr", "label_smoothing"):
            value = getattr(self, key)
            if value < 0 or not math.isfinite(value):
                problems.append(f"train.{key}: expected a finite number >= 0, got {value}")
            elif key == "lr" and not value > 0:
                problems.append(f"train.lr: expected a number > 0, got {value}")
        if self.epochs < 1:
            problems.append(f"train.epochs: expected an integer >= 1, got {self.epochs}")
        elif not 0 <= self.warmup_epochs <= self.epochs:
            problems.append(f"train.warmup_epochs: expected 0..train.epochs ({self.epochs}), got "
                            f"{self.warmup_epochs}")
        if self.batch_size < 1:
            problems.append(f"train.batch_size: expected an integer >= 1, got {self.batch_size}")
        if not 0 <= self.seed <= SEED_MAX:
            problems.append(f"train.seed: expected an integer in 0 .. {SEED_MAX} (2**32 - 1, the range NumPy's "
                            f"seeding takes), got {self.seed}")
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            problems.append(f"train.grad_clip: expected a finite number > 0 or null (no clipping), got "
                            f"{self.grad_clip}")
        if problems:
            raise ConfigError(*problems)

    @property
    def eval_batch(self) -> int:
        """Images per evaluation step: ``eval_batch_size``, or twice ``batch_size`` when it is unset (None)."""
        return 2 * self.batch_size if self.eval_batch_size is None else self.eval_batch_size


@dataclass
class OutputSection:
    dir: str = field(**option("parent folder of run directories (relative to the working directory)",
                              default="runs"))
    run_name: Optional[str] = field(**option("run directory name (default: the recipe's name)", default=None))
    save_adapters: bool = field(**option(
        "write the trained parameters (adapters + head) of every cycle as .safetensors; a run that prunes the "
        "backbone writes the whole pruned model's weights (model/cycle_K.safetensors)", default=True))
    save_checkpoint: Optional[str] = field(**option(
        "also write the whole model's weights here at the end, with the recipe, data, epochs and final top-1 in "
        "its metadata (how a pretraining recipe produces a backbone); '~' expands", default=None))
    replace_checkpoint: bool = field(**option(
        "let save_checkpoint replace an existing file prunekit did not write (without it such a file is refused "
        "before training; files prunekit wrote carry a mark in their safetensors metadata and are replaced)",
        default=False))
    plot: bool = field(**option("draw neurons per adapter per cycle (PNG, the paper's Fig. 4); a backbone run "
                                "draws the share of every group's units kept", default=True))
    tensorboard: bool = field(**option(
        "also write TensorBoard scalars (per epoch and per cycle) under RUN_DIR/tensorboard/; needs pip install "
        "'prunekit[tensorboard]'", default=False))
    save_state: bool = field(**option(
        "write resume.pt (trained weights, optimizer, RNG, cycle) after every epoch so `prunekit run --resume "
        "RUN_DIR` continues an interrupted run; false saves the write (full fine-tuning of a large model)",
        default=True))


@dataclass
class ResolvedSection:
    """What a run derived from the other keys; prunekit writes it into ``recipe.resolved.yaml`` and recomputes it on
    every run (a value read from a file is replaced), so it records what ran without changing what runs."""

    method_sigma: Optional[float] = field(**option(
        "sigma the adapters were injected at: method.sigma, or for a one-shot strategy the start that one prune of "
        "rho takes to sigma_target, sigma_target x (1 - rho) (method.sigma is then not used); widths round up, so "
        "cycle 0's measured sigma can be lower; null: the method has no sigma", default=None))
    scorer: Optional[str] = field(**option("the scorer that ranked units (strategy.scorer or the strategy's); null "
                                           "for strategy 'none'", default=None))
    scope: Optional[str] = field(**option("the scope that selected them (strategy.scope or the strategy's)",
                                          default=None))
    mode: Optional[str] = field(**option("the schedule mode that ran, 'iterative' or 'oneshot'", default=None))
    sigma_reference: Optional[float] = field(**option(
        "a one-shot run's training budget: it trains as many cycles as an iterative run from this compression "
        "(strategy.sigma_reference, else method.sigma); null for iterative strategies and for adapters of a fixed "
        "method.hidden width (the engine then uses their measured starting compression)", default=None))
