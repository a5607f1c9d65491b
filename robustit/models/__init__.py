"""Model families behind one interface, built by name from a spec."""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from .base import LMOutput, VisionLanguageModel
from .llava import build_llava
from .mini import build_mini
from .prompt import IGNORE_INDEX, EncodedBatch, PromptFormat

MODEL_FAMILIES: Registry[Callable[..., VisionLanguageModel]] = Registry("model family")
MODEL_FAMILIES.register("mini")(build_mini)
MODEL_FAMILIES.register("llava")(build_llava)


def build_model(family: str, **spec: Any) -> VisionLanguageModel:
    return MODEL_FAMILIES.get(family)(**spec)


__all__ = [
    "EncodedBatch", "IGNORE_INDEX", "LMOutput", "MODEL_FAMILIES", "PromptFormat",
    "VisionLanguageModel", "build_llava", "build_mini", "build_model",
]
