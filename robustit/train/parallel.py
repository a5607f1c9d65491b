"""Data-parallel tuning: the processes of one `accelerate launch` tune one model as one
process would (DESIGN.md section 8; docs/scale.md has the commands).

`train.batch_size` is the global batch. Every process draws the same seeded global batches
(the order one process draws) and trains on its contiguous slice of each (`DataParallel.shard`):
with N processes and a batch of B samples, process r takes samples r*B//N to (r+1)*B//N - 1.
Its LM loss enters the objective as the summed loss of its slice's response tokens, divided by
the token count of the whole global batch and multiplied by N (`DataParallel.lm_loss`), so that
DDP's average of the N gradients is the gradient of the batch's mean token loss, the
one-process objective, whatever the slices' token counts. The step count, the schedule (one
schedule step per global step: Accelerate's `split_batches`) and gradient clipping (of the
averaged gradient) are one process's. What differs from one process is float rounding: each
slice is padded to its own longest prompt and the gradient is summed in another order.

Only the main process writes: checkpoints, train.json, flags, the shared tuning's cache
entry, predictions, metrics, the report and the result-store record. It alone claims the run
directory, evaluates the base model before tuning and the tuned model after it; the other
processes load the data, tune and exit (they wait for the main process in the first
collective of tuning, up to the process group's timeout, 30 minutes by default).

Refused, each with an error naming the reason: a defense other than a test-time-only one (its
hooks of the loop's steps would see one process's slice of each batch, so its batch
statistics, random views and per-sample decisions would differ between processes and from one
process) and resuming (run it again in one process), by `refuse`; a global batch smaller than
the process count, by `DataParallel.check_batch`; Accelerate's set-ups other than DDP (FSDP,
DeepSpeed, Megatron-LM, XLA: they hold the trainable weights sharded or inside an engine, and
the checkpoints, the gradient audit and the defenses read them whole on the main process), by
`check_set_up`; a launch whose processes Accelerate did not join (on a machine without a GPU,
`accelerate launch --multi_gpu` without ACCELERATE_USE_CPU=1 starts processes that would each
tune alone), by `process_state`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, parse_flag_from_env

if TYPE_CHECKING:
    from robustit.defenses.base import Defense
    from robustit.models.base import LMOutput

DATA_PARALLEL_TYPES = frozenset({
    DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.MULTI_NPU,
    DistributedType.MULTI_MLU, DistributedType.MULTI_SDAA, DistributedType.MULTI_MUSA, DistributedType.MULTI_XPU,
    DistributedType.MULTI_HPU,
})
ONE_PROCESS = "run it in one process (without accelerate launch, or with --num_processes 1)"


def launched_processes() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_state() -> PartialState:
    """Accelerate's state of this process (on the CPU where ACCELERATE_USE_CPU says so, as
    `Accelerator` reads it), its process group joined on the first call; an error where the
    launcher started more processes than Accelerate joined."""
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes != launched_processes():
        raise ValueError(
            f"the launcher started {launched_processes()} processes (WORLD_SIZE) but Accelerate joined "
            f"{state.num_processes} ({state.distributed_type.value}): each would tune alone. On a machine without "
            f"a GPU, launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes "
            f"{launched_processes()} (docs/scale.md)")
    return state


def is_main_process() -> bool:
    """Whether this process writes: the only one, or the main one of a data-parallel launch."""
    return launched_processes() == 1 or process_state().is_main_process


def refuse(defense: Defense | None, resume: bool, processes: int) -> None:
    """A ValueError where tuning under `defense` (with `resume`) cannot run in `processes`
    data-parallel processes (see the module docstring); nothing for one process."""
    if processes == 1:
        return
    if defense is not None and not defense.test_time_only:
        raise ValueError(
            f"defense {defense.name!r} cannot tune data-parallel: its hooks of the tuning steps would see one "
            f"process's slice of each batch, so its batch statistics, random views or per-sample decisions would "
            f"differ between the {processes} processes and from one process; {ONE_PROCESS}")
    if resume:
        raise ValueError(f"resuming is not supported across {processes} processes; {ONE_PROCESS} with --resume")


def check_set_up(accelerator: Accelerator) -> None:
    """A ValueError where `accelerator` is set up for other than one process or DDP."""
    kind = accelerator.distributed_type
    if kind not in DATA_PARALLEL_TYPES:
        raise ValueError(f"tuning runs in one process or data-parallel with DDP; Accelerate is set up for {kind.value}, "
                         f"which holds the trainable weights sharded or inside an engine (docs/scale.md)")


@dataclass
class DataParallel:
    """Tuning across the processes of `accelerator`: `module` is the model as Accelerate
    prepared it (DDP-wrapped), which runs the forward passes so that the backward pass
    averages the gradients."""

    accelerator: Accelerator
    module: torch.nn.Module

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

    def check_batch(self, samples: int) -> None:
        """A ValueError where a global batch of `samples` leaves a process without a sample."""
        if samples < self.processes:
            raise ValueError(f"a global batch of {samples} samples cannot be split across {self.processes} processes "
                             f"(train.batch_size and the training set must hold at least one sample per process)")

    def shard(self, indices: list[int]) -> list[int]:
        """This process's contiguous slice of the global batch `indices`."""
        rank, size = self.accelerator.process_index, len(indices)
        return indices[rank * size // self.processes:(rank + 1) * size // self.processes]

    def lm_loss(self, output: LMOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """(this slice's share of the objective, the global batch's mean token loss) of one
        view: the slice's summed token loss over the global token count, times the process
        count, so that DDP's gradient average is the gradient of the global mean."""
        local = output.token_loss.sum()
        totals = torch.stack([local.detach(), torch.tensor(float(output.token_loss.numel()), device=local.device)])
        loss_sum, tokens = self.accelerator.reduce(totals, reduction="sum").unbind()
        return local * self.processes / tokens, loss_sum / tokens
