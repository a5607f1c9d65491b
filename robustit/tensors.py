"""Tensors on disk, as safetensors only (DESIGN.md section 9): a file holds named tensors and
string metadata, and reading it executes nothing (no pickle). Every write goes through
`robustit.atomic.write_atomic`; a file that is not safetensors (truncated, or a pickle put in
its place) is a ValueError naming it.

A state (`save_state`, `load_state`) is a flat mapping of names to tensors or JSON values
(an optimizer's moments beside its step count, a random generator's state): the tensors are
stored as tensors, the other values as one JSON document under the metadata key "json"."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a state (names -> tensors or JSON values) to `path`, atomically."""
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    values = {name: value for name, value in state.items() if name not in tensors}
    return save_tensors(path, tensors, {"json": json.dumps(values)})


def load_state(path: str | Path) -> dict[str, Any]:
    """The state `save_state` wrote to `path`."""
    tensors, metadata = load_tensors(path)
    try:
        values = json.loads(metadata["json"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a robustit state file (its metadata holds no JSON values: {error})") from None
    return {**values, **tensors}
