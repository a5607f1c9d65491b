"""LLaVA-style family over transformers' `LlavaForConditionalGeneration`.

Parts: the CLIP vision tower (frozen; features of `vision_feature_layer`, CLS dropped as in
LLaVA's "default" strategy), the `multi_modal_projector` (the adapter), the language model
(frozen blocks) and `lm_head`. `name_or_path` is a hub id or a local directory; `tiny=True`
builds a randomly initialised miniature from config objects for fast tests.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import Projector
from .base import VisionLanguageModel
from .hf import TINY_FORMAT, TINY_VISION, load_model, tiny_model, tiny_text
from .image_processing import Normalize
from .prompt import PromptFormat
from .registry import register_family
from .towers import CLIP_MEAN, CLIP_STD

TRAINABLE = ("model.multi_modal_projector.", "model.language_model.embed_tokens.", "lm_head.")


class ClipFeatures(nn.Module):
    def __init__(self, vision_tower: nn.Module, layer: int) -> None:
        super().__init__()
        self.tower = vision_tower
        self.layer = layer
        self.normalize = Normalize(CLIP_MEAN, CLIP_STD)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(self.normalize(pixels), output_hidden_states=True).hidden_states[self.layer]
        return hidden[:, 1:]


def tiny_llava_config(tokenizer: Any, image_size: int = 32) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(**{**TINY_VISION, "image_size": image_size}, projection_dim=32)
    text = LlamaConfig(**tiny_text(tokenizer, tie_word_embeddings=False))
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.pad_token_id,
                       vision_feature_layer=-1)


def tiny_llava(tokenizer: Any, image_size: int = 32, seed: int = 0) -> Any:
    """A random `LlavaForConditionalGeneration` miniature over `tokenizer`'s vocabulary."""
    return tiny_model(tiny_llava_config(tokenizer, image_size), seed, TRAINABLE)


@register_family("llava")
def build_llava(
    name_or_path: str | None = None,
    tiny: bool = False,
    vocabulary: list[str] | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> VisionLanguageModel:
    """LLaVA from a hub id or local directory, or its tiny miniature (`image_size` its side)."""
    from transformers import LlavaForConditionalGeneration

    model, tokenizer = load_model(
        (LlavaForConditionalGeneration,), name_or_path, tiny, vocabulary, seed,
        lambda tok: tiny_llava_config(tok, image_size or 32), TRAINABLE,
    )
    prompt_format = TINY_FORMAT if tiny else PromptFormat(
        user_prefix="USER: ", user_suffix=" ASSISTANT:", response_suffix=tokenizer.eos_token, turn_separator=""
    )
    vision_config = model.config.vision_config
    size = vision_config.image_size
    num_tokens = (size // vision_config.patch_size) ** 2
    spec: dict[str, Any] = dict(name_or_path=name_or_path, tiny=tiny, vocabulary=vocabulary, image_size=image_size, seed=seed)
    return VisionLanguageModel(
        family="llava",
        spec=spec,
        vision=ClipFeatures(model.model.vision_tower, model.config.vision_feature_layer),
        adapter=Projector(model.model.multi_modal_projector, num_tokens),
        decoder=model.model.language_model,
        lm_head=model.lm_head,
        tokenizer=tokenizer,
        image_size=size,
        prompt_format=prompt_format,
        multi_image=True,
    )
