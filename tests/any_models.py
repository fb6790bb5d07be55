"""Small models of the families tests/test_any_model.py prunes, built offline with random weights (transformers from
its config classes: no download), and the inputs each takes. Importable from a fresh process (the reload test)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

VOCAB, SEQ = 96, 8


def _tokens(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, VOCAB, (batch, SEQ), generator=g),
            "attention_mask": torch.ones(batch, SEQ, dtype=torch.long)}


def _causal(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"input_ids": _tokens(batch)["input_ids"]}


def _pixels(size: int) -> Callable[[int], dict[str, torch.Tensor]]:
    return lambda batch=2: {"pixel_values": torch.randn(batch, 3, size, size,
                                                        generator=torch.Generator().manual_seed(1))}


def _images(size: int) -> Callable[[int], torch.Tensor]:
    return lambda batch=2: torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


_ENCODER = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=32, num_labels=3)
_DECODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32, tie_word_embeddings=False)
_VISION = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, num_labels=5)


def _hf(config_cls: str, model_cls: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_cls)(**kwargs)
        return getattr(transformers, model_cls)(config)

    return build


class UNet(nn.Module):
    """A plain U-Net: conv blocks, max-pool down, ConvTranspose2d up, skips concatenated across resolutions."""

    def __init__(self, c: int = 8, classes: int = 2):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.enc1, self.enc2, self.mid = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), block(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), block(2 * c, c)
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


class TextRNN(nn.Module):
    """Token embedding -> a 2-layer LSTM / GRU -> a linear classifier on the last step."""

    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM, classes: int = 4):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.rnn = cell(32, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.head(out[:, -1])


def _token_ids(batch: int = 2) -> torch.Tensor:
    return _tokens(batch)["input_ids"]


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(**kwargs)

    return build


def _segmentation(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import segmentation

        return getattr(segmentation, name)(num_classes=3, weights=None, weights_backbone=None, aux_loss=None)

    return build


def _detection(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import detection

        return getattr(detection, name)(num_classes=3, weights=None, weights_backbone=None)

    return build


# name -> (builder, inputs(batch), family); every model is built after torch.manual_seed(0)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[..., Any], str]] = {
    "bert": (_hf("BertConfig", "BertForSequenceClassification", **_ENCODER), _tokens, "encoder"),
    "roberta": (_hf("RobertaConfig", "RobertaForSequenceClassification", **_ENCODER, pad_token_id=1), _tokens,
                "encoder"),
    "electra": (_hf("ElectraConfig", "ElectraForSequenceClassification", **_ENCODER, embedding_size=64), _tokens,
                "encoder"),
    "xlm_roberta": (_hf("XLMRobertaConfig", "XLMRobertaForSequenceClassification", **_ENCODER, pad_token_id=1),
                    _tokens, "encoder"),
    "llama_gqa": (_hf("LlamaConfig", "LlamaForCausalLM", **_DECODER, num_key_value_heads=2), _causal, "decoder"),
    "llama_mha": (_hf("LlamaConfig", "LlamaForCausalLM", **_DECODER, num_key_value_heads=4), _causal, "decoder"),
    "mistral_gqa": (_hf("MistralConfig", "MistralForCausalLM", **_DECODER, num_key_value_heads=2, sliding_window=None),
                    _causal, "decoder"),
    "qwen2_gqa": (_hf("Qwen2Config", "Qwen2ForCausalLM", **_DECODER, num_key_value_heads=2), _causal, "decoder"),
    "gpt2": (_hf("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                 bos_token_id=0, eos_token_id=0), _causal, "decoder"),
    "hf_vit": (_hf("ViTConfig", "ViTForImageClassification", **_VISION), _pixels(32), "vision"),
    "hf_deit": (_hf("DeiTConfig", "DeiTForImageClassification", **_VISION), _pixels(32), "vision"),
    "hf_dinov2": (_hf("Dinov2Config", "Dinov2ForImageClassification", **_VISION), _pixels(32), "vision"),
    "swin_t": (_torchvision("swin_t", num_classes=10), _images(64), "vision"),
    "maxvit_t": (_torchvision("maxvit_t", num_classes=10), _images(224), "vision"),  # its windows need 224 px
    "mnasnet0_5": (_torchvision("mnasnet0_5", num_classes=10), _images(64), "cnn"),
    "lraspp_mobilenet_v3": (_segmentation("lraspp_mobilenet_v3_large"), _images(64), "segmentation"),
    "deeplabv3_mobilenet_v3": (_segmentation("deeplabv3_mobilenet_v3_large"), _images(64), "segmentation"),
    "ssdlite": (_detection("ssdlite320_mobilenet_v3_large"), _images(128), "detection"),
    "fasterrcnn_mobilenet_v3": (_detection("fasterrcnn_mobilenet_v3_large_320_fpn"), _images(128), "detection"),
    "unet": (UNet, _images(32), "unet"),
    "lstm": (TextRNN, _token_ids, "recurrent"),
    "gru": (lambda: TextRNN(nn.GRU), _token_ids, "recurrent"),
}


def build(name: str) -> tuple[nn.Module, Any]:
    """``(model in eval mode, a batch of 2)`` for ``name``; the same weights every call."""
    builder, inputs, _ = MODELS[name]
    torch.manual_seed(0)
    return builder().eval(), inputs(2)
