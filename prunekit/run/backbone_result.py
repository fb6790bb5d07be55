"""The backbone's own numbers: what a recipe's ``model.checkpoint`` scores on the task it was pretrained on.

``prunekit ablate`` puts them in its tables next to the cells trained from that backbone. They come from the
checkpoint's metadata when its pretraining run wrote them there (``checkpoint.py``), and are otherwise measured: the
``model.pretrain`` recipe rebuilt on the checkpoint (its head included) and evaluated on that recipe's validation
split, as its run evaluated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..recipe.spec import Recipe, load_recipe
from .checkpoint import checkpoint_result

__all__ = ["backbone_result"]


def backbone_result(recipe: Recipe) -> dict[str, Any] | None:
    """The pretrained backbone of ``recipe``: top-1 on its pretraining validation split, parameters, epochs.

    Returns None when the recipe names no checkpoint, the file is missing, or nothing says how it was made (no result
    in its metadata and no ``model.pretrain`` recipe). Keys: ``checkpoint``, ``recipe`` (the pretraining recipe's
    name), ``data``, ``top1``, ``params``, ``epochs``, ``val_images`` (when measured), ``source`` (``metadata`` or
    ``measured``).
    """
    ckpt = recipe.model.checkpoint
    if not ckpt or not Path(ckpt).expanduser().is_file():
        return None
    meta = checkpoint_result(ckpt)
    if meta is not None:
        return {"checkpoint": ckpt, "recipe": meta["recipe"], "data": meta["data"], "top1": meta["last_top1"],
                "params": meta["total_params"], "epochs": meta["epochs"], "val_images": None, "source": "metadata"}
    if not recipe.model.pretrain:
        return None
    return _measure(recipe, ckpt)


def _measure(recipe: Recipe, ckpt: str) -> dict[str, Any]:
    from .build import build_model, num_classes_for
    from .reload import validation_top1

    base = Path(recipe.source).parent if recipe.source else Path.cwd()
    pre = load_recipe(base / recipe.model.pretrain, [f"model.checkpoint={ckpt}", "model.reset_head=false",
                                                     "model.pretrained=false"])
    model = build_model(pre, num_classes_for(pre))
    top1, images = validation_top1(pre, model)
    return {"checkpoint": ckpt, "recipe": pre.name, "data": pre.data.name, "top1": top1,
            "params": sum(p.numel() for p in model.parameters()),
            "epochs": (pre.strategy.cycles or 1) * pre.train.epochs, "val_images": images, "source": "measured"}
