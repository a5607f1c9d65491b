"""The transformers model and tokenizer behind a family: released weights by hub id or local
directory, or (`tiny=True`) a randomly initialised miniature built from config objects over
a word-level vocabulary, for tests; nothing downloads.

A miniature's frozen parts stand in for released weights: they are the same for every seed,
which varies only the initialisation of the trainable parts, so a trainable-only checkpoint
means the same model in any tiny build of the same vocabulary.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from transformers import PretrainedConfig, PreTrainedModel

from .prompt import PromptFormat
from .tokenizers import build_word_tokenizer

TINY_FORMAT = PromptFormat(
    user_prefix="<|im_start|>", user_suffix=" <|im_end|> <|im_start|>", response_suffix=" <|im_end|>", turn_separator=""
)
TINY_VISION: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
)


def tiny_text(tokenizer: Any, **overrides: Any) -> dict[str, Any]:
    """Settings of a miniature language model over `tokenizer`'s vocabulary, `overrides` last."""
    return {
        **dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               pad_token_id=tokenizer.pad_token_id),
        **overrides,
    }


def tiny_model(config: PretrainedConfig, seed: int, trainable: tuple[str, ...]) -> PreTrainedModel:
    """The model of `config` with the parameters named by the `trainable` prefixes initialised
    from `seed` and every other one from seed 0."""
    from transformers import AutoModelForImageTextToText

    frozen = None
    if seed != 0:
        torch.manual_seed(0)
        frozen = AutoModelForImageTextToText.from_config(config).state_dict()
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    if frozen is not None:
        model.load_state_dict({k: v for k, v in frozen.items() if not k.startswith(trainable)}, strict=False)
    return model


def load_tokenizer(name_or_path: str) -> Any:
    """The checkpoint's tokenizer, padding with its end token where it names no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    accepted: tuple[type[PreTrainedModel], ...],
    name_or_path: str | None,
    tiny: bool,
    vocabulary: list[str] | None,
    seed: int,
    tiny_config: Callable[[Any], PretrainedConfig],
    trainable: tuple[str, ...],
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the miniature of `tiny_config(tokenizer)` over
    `vocabulary` when `tiny`, else the checkpoint at `name_or_path`, which must hold one of
    the `accepted` model classes."""
    from transformers import AutoModelForImageTextToText

    if tiny:
        tokenizer = build_word_tokenizer(vocabulary or [])
        model = tiny_model(tiny_config(tokenizer), seed, trainable)
    elif name_or_path is None:
        raise ValueError(f"{accepted[0].__name__} needs name_or_path (hub id or local directory) or tiny=True")
    else:
        model, tokenizer = AutoModelForImageTextToText.from_pretrained(name_or_path).eval(), load_tokenizer(name_or_path)
    if not isinstance(model, accepted):
        names = ", ".join(c.__name__ for c in accepted)
        raise ValueError(f"{name_or_path or 'the tiny config'} holds a {type(model).__name__}; this family takes {names}")
    return model, tokenizer
