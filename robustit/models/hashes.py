"""Hashes that identify a model's weights and checkpoint files."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def weights_hash(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape, dtype and bytes, in name order: of a whole
    model, what identifies the starting model of a run (released weights and base adapter
    together); of a part, that part's weights (the frozen encoder's)."""
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
