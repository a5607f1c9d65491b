"""The registry of model families: each family module registers its builder by name."""
from __future__ import annotations

from typing import Any, Callable

from robustit.models.base import VisionLanguageModel
from robustit.registry import Registry

MODEL_FAMILIES: Registry[Callable[..., VisionLanguageModel]] = Registry("model family")


def register_family(name: str) -> Callable[[Callable[..., VisionLanguageModel]], Callable[..., VisionLanguageModel]]:
    """Decorator: register a builder `(**spec) -> VisionLanguageModel` as family `name`."""
    return MODEL_FAMILIES.register(name)


def build_model(family: str, **spec: Any) -> VisionLanguageModel:
    """The registered `family` built from `spec`."""
    return MODEL_FAMILIES.get(family)(**spec)
