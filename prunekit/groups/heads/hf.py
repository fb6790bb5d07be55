"""Attention heads of Hugging Face transformers models, recognised by structure (no class list to keep up to date).

transformers writes each architecture in its own ``modeling_<name>.py``, but the attention modules come in three
shapes, and since transformers 5 their forwards reshape into heads with ``-1`` and a fixed head size, so a model with
fewer heads runs as it is once its tensors are sliced:

- **encoder** (BERT, RoBERTa, ELECTRA, XLM-R; HF ViT, DeiT, DINOv2, YOLOS): a module with a self-attention child
  holding ``query`` / ``key`` / ``value`` Linears and ``num_attention_heads`` / ``attention_head_size`` /
  ``all_head_size``, and an ``output`` child whose ``dense`` Linear reads the heads. The layout is registered on the
  parent (``BertAttention``): one head is its q, k, v rows and its ``output.dense`` columns; ``num_attention_heads``
  and ``all_head_size`` follow.
- **decoder** (LLaMA, Mistral, Qwen2/3, Gemma, OLMo, Granite ...): ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``
  and ``head_dim``, rotary embeddings applied inside each head, and grouped-query attention: ``num_key_value_groups``
  = G query heads read each key/value head. A unit is **one key/value head together with its G query heads**: its
  k and v rows, the G query heads' q rows (query heads ``j*G .. j*G+G-1`` read kv head ``j``, as ``repeat_kv``
  lays them out) and their ``o_proj`` columns. G stays the same in every layer, so ``repeat_kv`` still matches and
  the KV cache holds fewer heads of the same size; the other reading (query heads pruned equally in every group)
  would change G, which the config stores once for the whole model. Without GQA (G = 1) a unit is one head.
- **GPT-2**: fused ``c_attn`` / ``c_proj`` ``Conv1D`` (weights stored as ``(in, out)``), ``num_heads``,
  ``split_size``.

The model's ``config`` is brought in line afterwards by :func:`sync_config` where the widths stay uniform.
"""
from __future__ import annotations

from torch import nn

from ...core.plan import register_after_apply
from .layouts import HEAD_LAYOUTS, HeadLayout, HeadSlice, linear_slices, register_head_layout

__all__ = ["register_model_classes", "sync_config", "encoder_layout", "decoder_layout", "gpt2_layout"]


def _linear(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Linear)


def _conv1d(m: nn.Module | None) -> bool:
    return m is not None and type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int)


def _encoder_parts(m: nn.Module) -> tuple[str, str] | None:
    """``(self-attention child, output child)`` of an encoder attention module, or None."""
    output = getattr(m, "output", None)
    if not (isinstance(output, nn.Module) and _linear(getattr(output, "dense", None))):
        return None
    for name, child in m.named_children():
        if (isinstance(getattr(child, "num_attention_heads", None), int)
                and isinstance(getattr(child, "attention_head_size", None), int)
                and all(_linear(getattr(child, p, None)) for p in ("query", "key", "value"))):
            return name, "output"
    return None


def encoder_layout(m: nn.Module) -> HeadLayout:
    s, o = _encoder_parts(m)
    slices = sum((linear_slices(f"{s}.{p}", 1, "row") for p in ("query", "key", "value")), ())
    slices += linear_slices(f"{o}.dense", 1, "column")
    width = (f"{s}.all_head_size",) if isinstance(getattr(getattr(m, s), "all_head_size", None), int) else ()
    return HeadLayout(slices, width_attrs=width, heads_attr=f"{s}.num_attention_heads")


def _is_decoder(m: nn.Module) -> bool:
    return (all(_linear(getattr(m, p, None)) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and isinstance(getattr(m, "head_dim", None), int))


def _kv_heads(m: nn.Module) -> int:
    return m.k_proj.out_features // m.head_dim


def decoder_layout(m: nn.Module) -> HeadLayout:
    # k first: its blocks are one head wide, so head_dim reads from it; q / o blocks are G heads wide
    kv = linear_slices("k_proj", 1, "row") + linear_slices("v_proj", 1, "row")
    q = tuple(HeadSlice(s.path, s.dim, s.repeats, s.role, within_head=False) for s in linear_slices("q_proj", 1, "row"))
    o = (HeadSlice("o_proj.weight", 1, 1, "column", within_head=False),)
    return HeadLayout(kv + q + o, heads_attr=None, count=_kv_heads)


def _is_gpt2(m: nn.Module) -> bool:
    return (_conv1d(getattr(m, "c_attn", None)) and _conv1d(getattr(m, "c_proj", None))
            and isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "split_size", None), int)
            and not getattr(m, "is_cross_attention", False))


def _gpt2_resized(m: nn.Module) -> None:
    m.split_size = m.num_heads * m.head_dim


def gpt2_layout(m: nn.Module) -> HeadLayout:
    slices = (HeadSlice("c_attn.weight", 1, 3, "row"), HeadSlice("c_attn.bias", 0, 3),
              HeadSlice("c_proj.weight", 0, 1, "column"))
    return HeadLayout(slices, on_resize=_gpt2_resized)


def _layout_fn(m: nn.Module):
    if _encoder_parts(m) is not None:
        return encoder_layout
    if _is_decoder(m):
        return decoder_layout
    if _is_gpt2(m):
        return gpt2_layout
    return None


def register_model_classes(model: nn.Module) -> None:
    """Register a layout for every transformers attention class of ``model`` recognised by structure (a class
    registered already, by prunekit or by the user, keeps its layout)."""
    for m in model.modules():
        cls = type(m)
        if not cls.__module__.startswith("transformers.") or HEAD_LAYOUTS.find(cls) is not None:
            continue
        fn = _layout_fn(m)
        if fn is not None:
            register_head_layout(cls, fn)


@register_after_apply
def sync_config(model: nn.Module) -> dict[str, int]:
    """Set the widths of ``model.config`` (a transformers ``PretrainedConfig``) that every layer now shares: heads,
    key/value heads, head size, MLP width; returns what it set. A width that differs between layers is left as it was
    (the model runs: each layer's shapes are in its tensors; rebuilding it from the config alone would not)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return {}
    heads, kv_heads, head_dims, mlp = set(), set(), set(), set()
    for m in model.modules():
        parts = _encoder_parts(m)
        if parts is not None:
            s = getattr(m, parts[0])
            heads.add(s.num_attention_heads)
            head_dims.add(s.attention_head_size)
        elif _is_decoder(m):
            kv = _kv_heads(m)
            heads.add(m.q_proj.out_features // m.head_dim)
            kv_heads.add(kv)
            head_dims.add(m.head_dim)
        elif _is_gpt2(m):
            heads.add(m.num_heads)
            head_dims.add(m.head_dim)
        for name in ("intermediate", "mlp"):
            sub = getattr(m, name, None)
            width = _mlp_width(sub) if isinstance(sub, nn.Module) else None
            if width is not None:
                mlp.add(width)
    changed: dict[str, int] = {}

    def put(attr: str, values: set) -> None:
        if len(values) == 1 and hasattr(config, attr):
            value = next(iter(values))
            if getattr(config, attr) != value:
                setattr(config, attr, value)
                changed[attr] = value

    if len(head_dims) == 1 and hasattr(config, "head_dim"):
        put("head_dim", head_dims)
    hidden = getattr(config, "hidden_size", None)
    if len(heads) == 1 and (hasattr(config, "head_dim") or (
            len(head_dims) == 1 and hidden == next(iter(heads)) * next(iter(head_dims)))):
        put("num_attention_heads", heads)  # only where the config still derives the head size it had
    put("num_key_value_heads", kv_heads)
    put("intermediate_size", mlp)
    if hasattr(config, "n_inner") and len(mlp) == 1:  # GPT-2's MLP width
        put("n_inner", mlp)
    return changed


def _mlp_width(m: nn.Module) -> int | None:
    for name in ("dense", "up_proj", "c_fc", "fc1"):
        layer = getattr(m, name, None)
        if _linear(layer):
            return layer.out_features
        if _conv1d(layer):
            return layer.nf
    return None
