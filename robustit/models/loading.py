"""Building a registered model family from its config section and putting weights in."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from robustit.models.base import VisionLanguageModel
from robustit.models.registry import build_model


def load_model(family: str, spec: dict[str, Any], base: str | Path | None = None) -> VisionLanguageModel:
    """The `family` model built from `spec`, with the trainable weights of the checkpoint
    directory `base` (e.g. a base adapter) copied in where given."""
    model = build_model(family, **spec)
    if base is not None:
        model.load_trainable(base, strict=False)
    return model


def weights_hash(model: VisionLanguageModel) -> str:
    """sha256 over every parameter's name, shape, dtype and bytes, in name order: what
    identifies the starting model of a run (released weights and base adapter together)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (e.g. a base adapter's trainable.safetensors)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
