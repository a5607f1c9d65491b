"""Tensors on disk, as safetensors only (DESIGN.md section 9): a file holds named tensors and
string metadata, and reading it executes nothing (no pickle). Every write goes through
`robustit.atomic.write_atomic`; a file that is not safetensors (truncated, or a pickle put in
its place) is a ValueError naming it."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from robustit.atomic import write_atomic


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` (copied to contiguous CPU memory) and `metadata` to `path`, atomically."""
    data = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, metadata=metadata)
    return write_atomic(path, data)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of the safetensors file `path`, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tensor file {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None

