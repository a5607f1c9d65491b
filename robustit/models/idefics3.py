"""Idefics3 / SmolVLM family over transformers' `Idefics3ForConditionalGeneration` and
`SmolVLMForConditionalGeneration` (the same architecture; a checkpoint's config picks the class).

Parts: the SigLIP-style vision transformer (frozen; its last hidden state, s x s patches),
the adapter = the connector: a pixel shuffle folding each r x r block of patches into one
token (r = `scale_factor`), then the linear `modality_projection` into the LM's width
(T = s^2 / r^2 visual tokens), the language model (frozen
blocks) and lm_head. Each image is one tile at the vision tower's side (robustit does not
split images into sub-tiles as the Idefics3 processor can), in Idefics3's prompt:
"<bos>User:<fake_token_around_image><global-img>" + T image tokens +
"<fake_token_around_image><instruction><end_of_utterance>\\nAssistant:", responses ending with
"<end_of_utterance>".
"""
from __future__ import annotations

from typing import Any

from .adapters import Projector
from .base import VisionLanguageModel
from .hf import TINY_FORMAT, TINY_VISION, load_model, tiny_text
from .prompt import PromptFormat
from .registry import register_family
from .towers import SIGLIP_MEAN, SIGLIP_STD, TowerFeatures

TRAINABLE = ("model.connector.", "model.text_model.embed_tokens.", "lm_head.")


def tiny_idefics3_config(tokenizer: Any) -> Any:
    from transformers import Idefics3Config, LlamaConfig

    return Idefics3Config(
        vision_config=TINY_VISION,
        text_config=LlamaConfig(**tiny_text(tokenizer)).to_dict(),
        scale_factor=2,
        image_token_id=tokenizer.pad_token_id,
    )


@register_family("idefics3")
def build_idefics3(
    name_or_path: str | None = None,
    tiny: bool = False,
    vocabulary: list[str] | None = None,
    seed: int = 0,
) -> VisionLanguageModel:
    """Idefics3 or SmolVLM from a hub id or local directory (e.g. HuggingFaceTB/SmolVLM-256M-Instruct),
    or the tiny Idefics3 miniature."""
    from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

    model, tokenizer = load_model(
        (Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration), name_or_path, tiny, vocabulary, seed,
        tiny_idefics3_config, TRAINABLE,
    )
    prompt_format = TINY_FORMAT if tiny else PromptFormat(
        user_prefix=f"{tokenizer.bos_token}User:<fake_token_around_image><global-img>",
        image_suffix="<fake_token_around_image>",
        user_suffix="<end_of_utterance>\nAssistant:",
        response_suffix="<end_of_utterance>",
    )
    vision_config = model.config.vision_config
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return VisionLanguageModel(
        family="idefics3",
        spec=dict(name_or_path=name_or_path, tiny=tiny, vocabulary=vocabulary, seed=seed),
        vision=TowerFeatures(model.model.vision_model, SIGLIP_MEAN, SIGLIP_STD),
        adapter=Projector(model.model.connector, patches // model.config.scale_factor**2),
        decoder=model.model.text_model,
        lm_head=model.lm_head,
        tokenizer=tokenizer,
        image_size=vision_config.image_size,
        prompt_format=prompt_format,
    )
