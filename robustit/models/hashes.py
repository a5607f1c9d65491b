"""Hashes that identify a model's weights and checkpoint files."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from robustit.models.base import VisionLanguageModel


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
