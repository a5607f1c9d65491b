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

from .base import VisionLanguageModel
from .registry import register_family
from .image_processing import Normalize
from .prompt import PromptFormat
from .tokenizers import build_word_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipFeatures(nn.Module):
    def __init__(self, vision_tower: nn.Module, layer: int) -> None:
        super().__init__()
        self.tower = vision_tower
        self.layer = layer
        self.normalize = Normalize(CLIP_MEAN, CLIP_STD)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(self.normalize(pixels), output_hidden_states=True).hidden_states[self.layer]
        return hidden[:, 1:]


class LlavaProjector(nn.Module):
    hook_point = "projector"

    def __init__(self, projector: nn.Module, num_tokens: int) -> None:
        super().__init__()
        self.projector = projector
        self.num_tokens = num_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)


def tiny_llava(tokenizer: Any, image_size: int = 32, seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=8, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.pad_token_id,
                         vision_feature_layer=-1)
    # The frozen parts stand in for released weights: the same for every seed, which (as in the
    # other families) varies only the initialisation of the trainable parts, so a trainable-only
    # checkpoint means the same model in any tiny build of the same vocabulary and size.
    frozen = None
    if seed != 0:
        torch.manual_seed(0)
        frozen = LlavaForConditionalGeneration(config).state_dict()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if frozen is not None:
        trainable = ("model.multi_modal_projector.", "model.language_model.embed_tokens.", "lm_head.")
        model.load_state_dict({k: v for k, v in frozen.items() if not k.startswith(trainable)}, strict=False)
    return model


@register_family("llava")
def build_llava(
    name_or_path: str | None = None,
    tiny: bool = False,
    vocabulary: list[str] | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> VisionLanguageModel:
    if tiny:
        tokenizer = build_word_tokenizer(vocabulary or [])
        model = tiny_llava(tokenizer, image_size or 32, seed)
        prompt_format = PromptFormat(user_prefix="<|im_start|>", user_suffix=" <|im_end|> <|im_start|>",
                                     response_suffix=" <|im_end|>", turn_separator="")
    elif name_or_path is not None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(name_or_path).eval()
        tokenizer = AutoProcessor.from_pretrained(name_or_path).tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompt_format = PromptFormat(user_prefix="USER: ", user_suffix=" ASSISTANT:", response_suffix=tokenizer.eos_token,
                                     turn_separator="")
    else:
        raise ValueError("build_llava needs name_or_path or tiny=True")
    vision_config = model.config.vision_config
    size = vision_config.image_size
    num_tokens = (size // vision_config.patch_size) ** 2
    spec: dict[str, Any] = dict(name_or_path=name_or_path, tiny=tiny, vocabulary=vocabulary, image_size=image_size, seed=seed)
    return VisionLanguageModel(
        family="llava",
        spec=spec,
        vision=ClipFeatures(model.model.vision_tower, model.config.vision_feature_layer),
        adapter=LlavaProjector(model.model.multi_modal_projector, num_tokens),
        decoder=model.model.language_model,
        lm_head=model.lm_head,
        tokenizer=tokenizer,
        image_size=size,
        prompt_format=prompt_format,
        multi_image=True,
    )
