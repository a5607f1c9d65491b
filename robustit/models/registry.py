"""The registry of model families: each family module registers its builder by name."""
from __future__ import annotations

from typing import Any, Callable

from robustit.models.base import VisionLanguageModel
from robustit.models.lora import LoraSettings
from robustit.registry import Registry

MODEL_FAMILIES: Registry[Callable[..., VisionLanguageModel]] = Registry("model family")


def register_family(name: str) -> Callable[[Callable[..., VisionLanguageModel]], Callable[..., VisionLanguageModel]]:
    """Decorator: register a builder `(**spec) -> VisionLanguageModel` as family `name`."""
    return MODEL_FAMILIES.register(name)


def build_model(family: str, lora: LoraSettings | dict[str, Any] | None = None, **spec: Any) -> VisionLanguageModel:
    """The registered `family` built from `spec`, with LoRA layers on its language model
    where `lora` gives their settings (a mapping: a model_spec.json's "lora")."""
    model = MODEL_FAMILIES.get(family)(**spec)
    if lora is not None:
        model.add_lora(lora if isinstance(lora, LoraSettings) else LoraSettings(**lora))
    return model
