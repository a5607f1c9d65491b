"""Idefics family (Flamingo-style) over transformers' `IdeficsForVisionText2Text`.

Parts: the CLIP-style vision transformer (frozen; its last hidden state, class token
included), the adapter = the perceiver resampler (learned latents reading the image features:
T = `resampler_n_latents` tokens, 64 in the released checkpoints, of the vision width) plus
the gated cross-attention blocks that sit before every `cross_layer_interval`-th decoder
layer and let the text attend to those tokens (tanh-gated by their learned alphas), the
LLaMA language model (frozen blocks) and lm_head. The input embedding and lm_head are
Idefics's decoupled ones (the vocabulary plus the added tokens such as "<image>"): all of
both train.

The visual tokens take no slots in the prompt: they reach the decoder as the perceiver
embeddings of one image, which every real token of the prompt and the response may attend to
(Idefics's own processor lets only the tokens from the "<image>" marker on attend; robustit
prompts open with the image, so only the few tokens of "<bos>User:" before it differ). The
prompt is Idefics-instruct's: "<bos>User:<fake_token_around_image><image><fake_token_around_image>"
+ instruction + "<end_of_utterance>\\nAssistant:", responses ending with "<end_of_utterance>".
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import Adapter
from .base import VisionLanguageModel
from .hf import TINY_FORMAT, load_model
from .prompt import PromptFormat
from .registry import register_family
from .towers import CLIP_MEAN, CLIP_STD, TowerFeatures

TRAINABLE = ("model.perceiver_resampler.", "model.gated_cross_attn_layers.", "model.embed_tokens.", "lm_head.")
ADDED_TOKENS = 2


class FlamingoAdapter(Adapter):
    """Perceiver resampler -> visual tokens, read by the decoder's gated cross-attention blocks."""

    hook_point = "resampler"
    num_tokens = 0

    def __init__(self, resampler: nn.Module, cross_attention: nn.ModuleList) -> None:
        super().__init__()
        self.resampler = resampler
        self.cross_attention = cross_attention

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.resampler(features)

    def decoder_inputs(self, visual_tokens: torch.Tensor, token_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One image per row (its perceiver embeddings); every real token attends to it."""
        return {"perceiver_embeddings": visual_tokens.unsqueeze(1), "image_attention_mask": token_mask.unsqueeze(-1)}


def tiny_idefics_config(tokenizer: Any) -> Any:
    """A miniature whose last `ADDED_TOKENS` words are the decoupled, added vocabulary."""
    from transformers import IdeficsConfig

    return IdeficsConfig(
        vocab_size=len(tokenizer) - ADDED_TOKENS, additional_vocab_size=ADDED_TOKENS, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, cross_layer_interval=1, use_resampler=True,
        alpha_initializer="normal", alpha_type="vector", alphas_initializer_range=0.5,
        vision_config=dict(embed_dim=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8),
    )


@register_family("idefics")
def build_idefics(
    name_or_path: str | None = None,
    tiny: bool = False,
    vocabulary: list[str] | None = None,
    seed: int = 0,
) -> VisionLanguageModel:
    """Idefics from a hub id or local directory (e.g. HuggingFaceM4/idefics-9b-instruct), or
    its tiny miniature."""
    from transformers import IdeficsForVisionText2Text

    model, tokenizer = load_model((IdeficsForVisionText2Text,), name_or_path, tiny, vocabulary, seed, tiny_idefics_config, TRAINABLE)
    if not model.config.use_resampler:
        raise ValueError(f"{name_or_path}: Idefics without the perceiver resampler is not supported")
    prompt_format = TINY_FORMAT if tiny else PromptFormat(
        user_prefix=f"{tokenizer.bos_token}User:<fake_token_around_image><image><fake_token_around_image>",
        user_suffix="<end_of_utterance>\nAssistant:",
        response_suffix="<end_of_utterance>",
    )
    return VisionLanguageModel(
        family="idefics",
        spec=dict(name_or_path=name_or_path, tiny=tiny, vocabulary=vocabulary, seed=seed),
        vision=TowerFeatures(model.model.vision_model, CLIP_MEAN, CLIP_STD),
        adapter=FlamingoAdapter(model.model.perceiver_resampler, model.model.gated_cross_attn_layers),
        decoder=model.model,
        lm_head=model.lm_head,
        tokenizer=tokenizer,
        image_size=model.config.vision_config.image_size,
        prompt_format=prompt_format,
    )
