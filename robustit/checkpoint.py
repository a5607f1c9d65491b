"""One checkpoint folder: written whole or not at all, and checked before it is used.

    trainable.safetensors, model_spec.json   the trainable weights (`VisionLanguageModel.save_trainable`)
    defense.safetensors                      the defense's `state_dict`, where it keeps any
    training.safetensors                     what resuming needs (`robustit.train.resume`), intermediate
                                             checkpoints only: optimizer, scheduler, random
                                             generators, data position, the defense's training state
    checkpoint.json                          written last: the step and the sha256 of every file above

The folder is filled under a temporary name and renamed into place (`atomic_directory`), so a
kill leaves no half-written checkpoint under a checkpoint's name; one that is damaged all the
same (a file missing, truncated or changed after the fact, checkpoint.json absent) is named
by `checkpoint_problem`, and a resumed run falls back to the checkpoint before it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustit.atomic import atomic_directory, write_atomic
from robustit.models.hashes import file_hash
from robustit.tensors import load_state, load_tensors, save_state, save_tensors

if TYPE_CHECKING:
    from robustit.defenses.base import Defense
    from robustit.models.base import VisionLanguageModel

RECORD = "checkpoint.json"
TRAINING_STATE = "training.safetensors"
DEFENSE_STATE = "defense.safetensors"


def write_checkpoint(
    folder: Path, model: VisionLanguageModel, defense: Defense | None, step: int | None, training: dict[str, Any] | None
) -> Path:
    """Write the checkpoint of `model` (and `defense`; `training` for a resumable one) to `folder`."""
    with atomic_directory(folder) as temporary:
        model.save_trainable(temporary)
        state = defense.state_dict() if defense is not None else {}
        if state:
            save_tensors(temporary / DEFENSE_STATE, state)
        if training is not None:
            save_state(temporary / TRAINING_STATE, training)
        hashes = {path.name: file_hash(path) for path in sorted(temporary.iterdir())}
        write_atomic(temporary / RECORD, json.dumps({"step": step, "sha256": hashes}, indent=2) + "\n")
    return folder


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be used (None if it can): checkpoint.json absent
    or unreadable, or a file it lists missing or not matching its sha256."""
    record_path = folder / RECORD
    if not record_path.is_file():
        return f"no {RECORD} (it is written last, so the checkpoint is incomplete)"
    try:
        hashes = json.loads(record_path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {RECORD} ({error})"
    for name, digest in hashes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_hash(path) != digest:
            return f"{name} does not match the sha256 in {RECORD} (truncated or changed)"
    return None


def read_checkpoint(folder: Path, model: VisionLanguageModel, defense: Defense | None) -> dict[str, Any]:
    """Load the weights into `model` and the defense state into `defense`; returns the
    training state ({} where the checkpoint holds none). A checkpoint that records its files
    (checkpoint.json) is checked first; a problem is a ValueError naming the folder."""
    if (folder / RECORD).is_file():
        problem = checkpoint_problem(folder)
        if problem is not None:
            raise ValueError(f"checkpoint {folder} is damaged: {problem}")
    model.load_trainable(folder, strict=False)
    if defense is not None and (folder / DEFENSE_STATE).is_file():
        defense.load_state_dict(load_tensors(folder / DEFENSE_STATE)[0])
    return load_state(folder / TRAINING_STATE) if (folder / TRAINING_STATE).is_file() else {}
