"""PaliGemma family (PaliGemma and PaliGemma 2) over transformers'
`PaliGemmaForConditionalGeneration`.

Parts: the SigLIP vision tower (frozen; its last hidden state, s x s patches), the adapter =
the linear `multi_modal_projector` into the LM's width (T = s^2 visual tokens: 256 at 224 px),
the Gemma language model (frozen blocks; it scales the word embeddings by sqrt(D) itself,
so visual tokens enter unscaled, as in transformers) and lm_head, whose logits PaliGemma 2
soft-caps as c * tanh(z / c) with c = `final_logit_softcapping`. The prompt is PaliGemma's:
the visual tokens, "<bos>", the instruction and a newline; responses end with "<eos>".
PaliGemma attends over the image and the instruction bidirectionally (a prefix LM);
robustit's decoder calls are causal throughout, so a released checkpoint starts slightly off
its own attention pattern, and tuning adapts the adapter and embeddings to the causal one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import Projector
from .base import VisionLanguageModel
from .hf import TINY_FORMAT, TINY_VISION, load_model, tiny_text
from .prompt import PromptFormat
from .registry import register_family
from .towers import SIGLIP_MEAN, SIGLIP_STD, TowerFeatures

TRAINABLE = ("model.multi_modal_projector.", "model.language_model.embed_tokens.", "lm_head.")


class SoftCappedHead(nn.Module):
    """lm_head followed by Gemma 2's logit soft-capping, c * tanh(z / c)."""

    def __init__(self, head: nn.Linear, cap: float) -> None:
        super().__init__()
        self.head = head
        self.cap = cap

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(self.head(hidden) / self.cap)


def tiny_paligemma_config(tokenizer: Any) -> Any:
    from transformers import PaliGemmaConfig

    text = tiny_text(tokenizer, model_type="gemma2", head_dim=8, num_key_value_heads=1, sliding_window=16)
    return PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", **TINY_VISION, "vision_use_head": False},
        text_config=text,
        projection_dim=text["hidden_size"],
        image_token_index=tokenizer.pad_token_id,
    )


@register_family("paligemma")
def build_paligemma(
    name_or_path: str | None = None,
    tiny: bool = False,
    vocabulary: list[str] | None = None,
    seed: int = 0,
) -> VisionLanguageModel:
    """PaliGemma from a hub id or local directory (e.g. google/paligemma2-3b-pt-224), or its
    tiny miniature (a Gemma 2 language model, soft-capped)."""
    from transformers import PaliGemmaForConditionalGeneration

    model, tokenizer = load_model(
        (PaliGemmaForConditionalGeneration,), name_or_path, tiny, vocabulary, seed, tiny_paligemma_config, TRAINABLE
    )
    prompt_format = TINY_FORMAT if tiny else PromptFormat(
        user_prefix="", image_suffix=tokenizer.bos_token, user_suffix="\n", response_suffix=tokenizer.eos_token
    )
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    vision_config = model.config.vision_config
    return VisionLanguageModel(
        family="paligemma",
        spec=dict(name_or_path=name_or_path, tiny=tiny, vocabulary=vocabulary, seed=seed),
        vision=TowerFeatures(model.model.vision_tower, SIGLIP_MEAN, SIGLIP_STD),
        adapter=Projector(model.model.multi_modal_projector, (vision_config.image_size // vision_config.patch_size) ** 2),
        decoder=model.model.language_model,
        lm_head=model.lm_head if cap is None else SoftCappedHead(model.lm_head, cap),
        tokenizer=tokenizer,
        image_size=vision_config.image_size,
        prompt_format=prompt_format,
    )
