"""BLIP-2 family over transformers' `Blip2ForConditionalGeneration` (decoder-only language
models: OPT; the Flan-T5 checkpoints are encoder-decoders, which robustit's loss and
generation do not run).

Parts: the EVA/CLIP-style vision model (frozen; its last hidden state, class token
included, as BLIP-2 feeds it to the Q-Former), the adapter = the learned query tokens, the
Q-Former reading the image by cross-attention and the `language_projection` into the LM's
width (T = num_query_tokens visual tokens, 32 in the released checkpoints), the language model
(frozen blocks) and its lm_head. The prompt is BLIP-2's: the visual tokens, then the
begin-of-text token and "Question: <instruction> Answer:"; a response ends with a newline,
the end token of BLIP-2 OPT's own generation config.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import Adapter
from .base import VisionLanguageModel
from .hf import TINY_FORMAT, TINY_VISION, load_model
from .prompt import PromptFormat
from .registry import register_family
from .towers import CLIP_MEAN, CLIP_STD, TowerFeatures

TRAINABLE = ("query_tokens", "qformer.", "language_projection.", "language_model.model.decoder.embed_tokens.", "language_model.lm_head.")


class QFormerAdapter(Adapter):
    """Learned queries -> Q-Former (self-attention, cross-attention to the image) -> projection."""

    hook_point = "projection"

    def __init__(self, query_tokens: nn.Parameter, qformer: nn.Module, projection: nn.Linear) -> None:
        super().__init__()
        self.query_tokens = query_tokens
        self.qformer = qformer
        self.projection = projection
        self.num_tokens = query_tokens.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        image_mask = torch.ones(features.shape[:-1], dtype=torch.long, device=features.device)
        latents = self.qformer(query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=image_mask)
        return self.projection(latents.last_hidden_state)


def tiny_blip2_config(tokenizer: Any) -> Any:
    from transformers import Blip2Config, OPTConfig

    text = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
    )
    return Blip2Config(
        vision_config=TINY_VISION,
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            encoder_hidden_size=TINY_VISION["hidden_size"]),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.pad_token_id,
    )


@register_family("blip2")
def build_blip2(
    name_or_path: str | None = None,
    tiny: bool = False,
    vocabulary: list[str] | None = None,
    seed: int = 0,
) -> VisionLanguageModel:
    """BLIP-2 from a hub id or local directory (e.g. Salesforce/blip2-opt-2.7b), or its tiny miniature."""
    from transformers import Blip2ForConditionalGeneration

    model, tokenizer = load_model((Blip2ForConditionalGeneration,), name_or_path, tiny, vocabulary, seed, tiny_blip2_config, TRAINABLE)
    if not model.config.use_decoder_only_language_model:
        raise ValueError(f"{name_or_path}: BLIP-2 with an encoder-decoder language model is not supported (decoder-only LMs only)")
    prompt_format = TINY_FORMAT if tiny else PromptFormat(
        user_prefix="", image_suffix=f"{tokenizer.bos_token}Question: ", user_suffix=" Answer:", response_suffix="\n"
    )
    language_model = model.language_model
    return VisionLanguageModel(
        family="blip2",
        spec=dict(name_or_path=name_or_path, tiny=tiny, vocabulary=vocabulary, seed=seed),
        vision=TowerFeatures(model.vision_model, CLIP_MEAN, CLIP_STD),
        adapter=QFormerAdapter(model.query_tokens, model.qformer, model.language_projection),
        decoder=language_model.model,
        lm_head=language_model.lm_head,
        tokenizer=tokenizer,
        image_size=model.config.vision_config.image_size,
        prompt_format=prompt_format,
    )
