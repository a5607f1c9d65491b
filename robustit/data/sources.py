"""Data sources by name: each builds the samples of one split from its options."""
from __future__ import annotations

from typing import Any, Callable

from robustit.data.karpathy import load_karpathy
from robustit.data.llava import load_llava
from robustit.data.mimicit import load_mimicit
from robustit.data.sample import Sample
from robustit.data.stampcaps import build_stampcaps
from robustit.data.stampcaps_vqa import build_stampcaps_vqa
from robustit.data.vqav2 import load_vqav2
from robustit.registry import Registry

DataSource = Callable[..., list[Sample]]
DATA_SOURCES: Registry[DataSource] = Registry("data source")
DATA_SOURCES.register("stampcaps")(build_stampcaps)
DATA_SOURCES.register("stampcaps_vqa")(build_stampcaps_vqa)
DATA_SOURCES.register("karpathy")(lambda split, **options: load_karpathy(split=split, **options))
DATA_SOURCES.register("vqav2")(load_vqav2)
DATA_SOURCES.register("llava")(load_llava)
DATA_SOURCES.register("mimicit")(load_mimicit)


def load_split(source: str, split: str, options: dict[str, Any]) -> list[Sample]:
    """The samples of `split` from the registered `source`."""
    return DATA_SOURCES.get(source)(split, **options)
