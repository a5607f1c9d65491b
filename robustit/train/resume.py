"""What an intermediate checkpoint holds so that a killed tuning run resumes exactly: the run
ends with the trainable weights, losses and metrics an uninterrupted run with the same seed
ends with.

`LoopState` is the loop's own position and record: steps done, the batches drawn in the
current epoch, the step it began at and the data loader's generator state at its start (a
resumed epoch redraws the same order and skips what it had drawn), the losses, the passes, the
gradient audit of the first step and the tuning time up to the checkpoint. `training_state` gathers it with the optimizer's and the scheduler's state,
the global random generators (Python, NumPy, torch, CUDA) and the defense's
`training_state()`, as one flat state of tensors and JSON values (`robustit.tensors.save_state`);
`restore` puts all of it back. The trainable weights and the defense's `state_dict` travel
beside it in the checkpoint (`robustit.checkpoint`).

Frozen-encoder features are computed again after a resume, in other batches than before; the
result is the same bit for bit where the encoder's output for an image does not depend on the
other images of its batch (on the CPU: with one thread).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from robustit.defenses.base import Defense
    from robustit.models.base import VisionLanguageModel


@dataclass
class LoopState:
    """The tuning loop's position and record (see the module docstring)."""

    step: int = 0
    batches: int = 0
    epoch_first_step: int = 0
    epoch_generator: torch.Tensor | None = None
    losses: list[float] = field(default_factory=list)
    loss_terms: dict[str, list[float]] = field(default_factory=dict)
    passes: int = 0
    seconds: float = 0.0
    audit: dict[str, Any] = field(default_factory=dict)


def _random_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    numpy = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "rng.python": [version, list(internal), gauss],
        "rng.numpy": {**numpy, "state": {"key": numpy["state"]["key"].tolist(), "pos": numpy["state"]["pos"]}},
        "rng.torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["rng.python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["rng.numpy"]
    np.random.set_state({**numpy, "state": {"key": np.array(numpy["state"]["key"], dtype=np.uint32),
                                            "pos": numpy["state"]["pos"]}})
    torch.set_rng_state(state["rng.torch"])
    cuda = [state[key] for key in sorted(k for k in state if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def training_state(
    loop: LoopState, optimizer: torch.optim.Optimizer, scheduler: Any, defense: Defense | None
) -> dict[str, Any]:
    """The flat state of everything but the weights that resuming after `loop.step` needs."""
    loop_record = asdict(loop)
    state: dict[str, Any] = {"loop": {k: v for k, v in loop_record.items() if k != "epoch_generator"}}
    if loop.epoch_generator is not None:
        state["loop.epoch_generator"] = loop.epoch_generator
    optimizer_state = optimizer.state_dict()
    state["optimizer.param_groups"] = optimizer_state["param_groups"]
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name!r} of parameter {index} is not a tensor: {value!r}")
            state[f"optimizer.state.{index}.{name}"] = value
    state["scheduler"] = scheduler.state_dict()
    state.update(_random_state())
    if defense is not None:
        state.update({f"defense.{key}": value for key, value in defense.training_state().items()})
    return state


def restore(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, defense: Defense | None,
    model: VisionLanguageModel,
) -> LoopState:
    """Put `training_state`'s optimizer, scheduler, random generators and defense state back;
    returns the loop's state. Call it after the defense's `prepare`, just before the loop."""
    per_parameter: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("optimizer.state."):
            index, name = key[len("optimizer.state."):].split(".", 1)
            per_parameter.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_parameter, "param_groups": state["optimizer.param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    if defense is not None:
        defense.load_training_state({k[len("defense."):]: v for k, v in state.items() if k.startswith("defense.")}, model)
    _set_random_state(state)
    return LoopState(**state["loop"], epoch_generator=state.get("loop.epoch_generator"))
