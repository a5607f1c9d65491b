"""The throughput benchmark: where a VanillaIT tuning step's time goes, against the practical
limit of the machine it runs on, and what batching buys greedy generation. Everything runs in
one process with the configured torch threads, on the benchmark config's poisoned training
data and model (`packaged_config`, defense none).

Phases of a step. The step is the loop's own (`robustit.train.loop`: `tuning_objective`,
`accelerator.backward`, `optimizer_step`, over the batches `index_loader` draws), timed with
`time.perf_counter` around each phase; a phase's time excludes the phases timed inside it:

    data             drawing the batch's samples (the attack poisons its selection on access)
    frozen encoder   `FeatureCache.features`: hashing each image, the cache lookup, and f_v on
                     the images not cached (every image of a step in the first epoch)
    adapter forward  `model.visual_tokens`: H_psi(f_v(x)), snapped onto word embeddings for a
                     visual-words model
    LM forward       the rest of `tuning_objective`: prompt encoding, embedding, the decoder, the
                     lm_head on response positions and the loss
    backward         `accelerator.backward` of the loss (adapter, LM and embeddings together)
    optimizer        `optimizer_step`: gradient clipping, AdamW, the schedule, zero_grad
    other            the step's wall time less its phases' (bookkeeping between them)

`steps` measured steps follow `WARMUP_STEPS` warm-up steps, all from a fresh feature cache; a
phase's figure is its mean seconds per measured step and its share of the mean step.

FLOPs per step are counted, not estimated: a second pass over the same batches (tuning on; the
counts depend on shapes alone), again from a fresh cache so the encoder sees the same misses,
runs under `torch.utils.flop_counter.FlopCounterMode`, which counts from the shapes of each
operation, forward and backward:

    matmul (m x k) @ (k x n)                    2 m k n
    convolution (grouped, depthwise too)        2 * output elements * (C_in / groups) * k_h * k_w
    attention, forward                          4 b h s_q s_k d     (QK^T and PV)
    attention, backward                         10 b h s_q s_k d    (recomputed scores + 4 matmuls)

The counter has no formula for CPU's fused attention kernel
(`_scaled_dot_product_flash_attention_for_cpu` and its backward), so `CPU_ATTENTION_FLOPS`
gives it the counter's own formulas of the other attention kernels; elementwise work
(normalisation, activations, the loss, AdamW's update) is not counted. The counts read against
the dense estimate of a decoder of L layers of width d_model, N_blocks parameters in its blocks
and N_head in the lm_head (which runs on the R response positions only):

    LM forward   ~ 2 N_blocks * tokens + 2 N_head * R + 4 L * seq^2 * d_model per sequence
    backward     ~ 1 x the forward matmuls of the frozen blocks (input gradients only: frozen
                   parameters get no weight gradient) + 2 x those of the trained adapter and
                   lm_head (input and weight gradients) + 2.5 x the attention term

The machine's practical limit is the achieved rate of a large float32 matmul in the same
process and threads:

    R_matmul = 2 n^3 * repeats / seconds,   n = `MATMUL_SIZE`, `MATMUL_REPEATS` after a warm-up
    R_step   = FLOPs per step / seconds per step,  reported as R_step / R_matmul

Generation: greedy decoding (`generate_responses`, eval.max_new_tokens) of the first
eval.batch_size test samples (one batch of the evaluation) in one batch, then one at a time,
after one untimed call and with their features cached (the encoder is not timed); samples per
second of each and

    speed-up = (samples/s batched) / (samples/s one at a time),

with how many of the texts the two agree on. Output: `out` (Markdown: the phase table with
columns phase, s/step, share of step, GFLOP/step, GFLOP/s, of matmul; the limit table; the
generation table with columns mode, batch size, samples, s, samples/s, speed-up) and the same
numbers as JSON beside it (`out` with suffix .json). No run directory, no record.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import wraps
from itertools import islice
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.scheduler import AcceleratedScheduler
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from robustit.atomic import write_atomic
from robustit.config import packaged_config
from robustit.data.sample import Sample
from robustit.eval.generate import generate_responses
from robustit.experiment import Experiment
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.report import markdown_table
from robustit.train.config import TrainConfig
from robustit.train.loop import index_loader, optimizer_step, prepare_tuning, seed_everything, tuning_objective

DATA, ENCODER, ADAPTER, LM_FORWARD, BACKWARD, OPTIMIZER = (
    "data", "frozen encoder", "adapter forward", "LM forward", "backward", "optimizer")
PHASES = (DATA, ENCODER, ADAPTER, LM_FORWARD, BACKWARD, OPTIMIZER)
OTHER = "other"
WARMUP_STEPS = 2
MATMUL_SIZE = 2048
MATMUL_REPEATS = 10
FLOPS_COUNTED_BY = "FlopCounterMode"
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__,
}


class PhaseClock:
    """Seconds and, with a FLOP counter, counted FLOPs of each phase, each exclusive of the
    phases that run inside it."""

    def __init__(self, counter: FlopCounterMode | None = None) -> None:
        self.counter = counter
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.flops = dict.fromkeys(PHASES, 0)
        self._open: list[str] = []

    def counting(self) -> ContextManager[Any]:
        """The counter's context (nothing without one)."""
        return self.counter if self.counter is not None else nullcontext()

    def _counted(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, counted = time.perf_counter(), self._counted()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            seconds, flops = time.perf_counter() - start, self._counted() - counted
            self.seconds[name] += seconds
            self.flops[name] += flops
            if self._open:
                self.seconds[self._open[-1]] -= seconds
                self.flops[self._open[-1]] -= flops

    def timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        """`method`, each call of it timed as phase `name`."""
        @wraps(method)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return method(*args, **kwargs)
        return run


@dataclass
class _Tuning:
    """VanillaIT's tuning as the loop sets it up; `features` is replaced by each pass."""

    model: VisionLanguageModel
    dataset: Sequence[Sample]
    accelerator: Accelerator
    optimizer: torch.optim.Optimizer
    scheduler: AcceleratedScheduler
    max_grad_norm: float
    features: FeatureCache


def _prepare(experiment: Experiment) -> _Tuning:
    config = experiment.config.train
    dataset = experiment.poison()
    seed_everything(config.seed)
    total = config.total_steps(len(dataset))
    accelerator, model, optimizer, scheduler = prepare_tuning(experiment.model, config, total)
    model.train()
    return _Tuning(model, dataset, accelerator, optimizer, scheduler, config.max_grad_norm, FeatureCache(model))


def _batches(size: int, config: TrainConfig, count: int) -> list[list[int]]:
    """The first `count` batches of indices the tuning loop draws, epoch after epoch."""
    loader = index_loader(size, config)
    batches: list[list[int]] = []
    while len(batches) < count:
        batches.extend(islice(loader, count - len(batches)))
    return batches


@contextmanager
def _forward_phases(tuning: _Tuning, clock: PhaseClock) -> Iterator[None]:
    """Time `features.features` as the frozen encoder and `model.visual_tokens` as the adapter
    forward, each wrapped on its instance while the context lasts."""
    tuning.features.features = clock.timed(ENCODER, tuning.features.features)
    tuning.model.visual_tokens = clock.timed(ADAPTER, tuning.model.visual_tokens)
    try:
        yield
    finally:
        del tuning.features.features, tuning.model.visual_tokens


def _step(tuning: _Tuning, indices: list[int], clock: PhaseClock) -> None:
    with clock.phase(DATA):
        samples = [tuning.dataset[i] for i in indices]
    with clock.phase(LM_FORWARD):
        objective = tuning_objective(tuning.model, samples, tuning.features, None)[0]
    with clock.phase(BACKWARD):
        tuning.accelerator.backward(objective)
    with clock.phase(OPTIMIZER):
        optimizer_step(tuning.accelerator, tuning.model, tuning.optimizer, tuning.scheduler, tuning.max_grad_norm)


def _run_steps(tuning: _Tuning, batches: list[list[int]], clock: PhaseClock) -> list[float]:
    """One step per batch into `clock`; the seconds of each."""
    seconds = []
    with _forward_phases(tuning, clock), clock.counting():
        for indices in batches:
            start = time.perf_counter()
            _step(tuning, indices, clock)
            seconds.append(time.perf_counter() - start)
    return seconds


def _measure(tuning: _Tuning, batches: list[list[int]], clock: PhaseClock) -> tuple[list[float], int]:
    """The warm-up batches, then the measured ones into `clock`, from a fresh feature cache:
    (seconds of each measured step, images the measured steps encoded)."""
    tuning.features = FeatureCache(tuning.model)
    _run_steps(tuning, batches[:WARMUP_STEPS], PhaseClock())
    cached = len(tuning.features)
    seconds = _run_steps(tuning, batches[WARMUP_STEPS:], clock)
    return seconds, len(tuning.features) - cached


def matmul_flops_per_second(size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> float:
    """R_matmul: FLOP/s of `repeats` float32 (size x size) @ (size x size) products after one
    untimed product, in this process's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _generation(
    model: VisionLanguageModel, samples: list[Sample], features: FeatureCache, max_new_tokens: int
) -> dict[str, Any]:
    """Greedy texts, seconds and samples/s of `samples` in one batch and one at a time, after
    caching their features and generating for the first one untimed."""
    features.features([s.image for s in samples])
    generate_responses(model, samples[:1], features, 1, max_new_tokens, progress=False)
    modes: dict[str, Any] = {}
    for mode, batch_size in (("batched", len(samples)), ("one at a time", 1)):
        start = time.perf_counter()
        texts = generate_responses(model, samples, features, batch_size, max_new_tokens, progress=False)
        seconds = time.perf_counter() - start
        modes[mode] = {"batch_size": batch_size, "seconds": seconds, "samples_per_second": len(samples) / seconds,
                       "texts": texts}
    batched, single = modes["batched"], modes["one at a time"]
    return {
        "samples": len(samples),
        "max_new_tokens": max_new_tokens,
        "modes": modes,
        "speed_up": batched["samples_per_second"] / single["samples_per_second"],
        "same_texts": sum(a == b for a, b in zip(batched["texts"], single["texts"])),
    }


def _setting(experiment: Experiment, steps: int, encoded: int) -> dict[str, Any]:
    """What was measured and how."""
    config = experiment.config
    return {
        "config": config.name,
        "model": config.model.family,
        "threads": torch.get_num_threads(),
        "batch_size": config.train.batch_size,
        "steps": steps,
        "warmup_steps": WARMUP_STEPS,
        "images_encoded_per_step": encoded / steps,
        "flops_counted_by": FLOPS_COUNTED_BY,
    }


def _step_figures(timed: PhaseClock, counted: PhaseClock, step_seconds: list[float], matmul: float) -> dict[str, Any]:
    """Each phase's seconds, share, FLOPs and FLOP/s per step; the remainder; the whole step's
    against the matmul reference `matmul` (FLOP/s)."""
    steps = len(step_seconds)
    step = sum(step_seconds) / steps
    flops = sum(counted.flops.values()) / steps
    phases = {name: {"seconds_per_step": timed.seconds[name] / steps,
                     "share_of_step": timed.seconds[name] / steps / step,
                     "flops_per_step": counted.flops[name] / steps,
                     "flops_per_second": counted.flops[name] / timed.seconds[name]} for name in PHASES}
    other = step - sum(p["seconds_per_step"] for p in phases.values())
    return {
        "phases": phases,
        "other": {"seconds_per_step": other, "share_of_step": other / step},
        "step": {"seconds_each": step_seconds, "seconds_per_step": step, "flops_per_step": flops,
                 "flops_per_second": flops / step, "share_of_matmul": flops / step / matmul},
        "matmul": {"size": MATMUL_SIZE, "repeats": MATMUL_REPEATS, "flops_per_second": matmul},
    }


def _three_digits(value: float) -> str:
    return f"{value:.3g}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _phase_row(phase: str, figures: dict[str, float], matmul: float) -> dict[str, str]:
    """A row of the phase table: seconds and share of the step and, where counted, FLOPs and
    their rate, also as a share of the matmul reference's rate `matmul`."""
    row = {"phase": phase, "s/step": _three_digits(figures["seconds_per_step"]),
           "share of step": _percent(figures["share_of_step"])}
    if "flops_per_step" in figures:
        row.update({"GFLOP/step": _three_digits(figures["flops_per_step"] / 1e9),
                    "GFLOP/s": _three_digits(figures["flops_per_second"] / 1e9),
                    "of matmul": _percent(figures["flops_per_second"] / matmul)})
    return row


def _markdown(numbers: dict[str, Any]) -> str:
    matmul, step, generation = numbers["matmul"], numbers["step"], numbers["generation"]
    rate = matmul["flops_per_second"]
    phases = [_phase_row(name, figures, rate) for name, figures in numbers["phases"].items()]
    phases += [_phase_row(OTHER, numbers["other"], rate),
               _phase_row("whole step", {**step, "share_of_step": 1.0}, rate)]
    size = matmul["size"]
    limit = [{"reference": f"float32 matmul {size} x {size} @ {size} x {size}, {matmul['repeats']} repeats",
              "GFLOP/s": _three_digits(rate / 1e9), "of matmul": _percent(1.0)},
             {"reference": "tuning step", "GFLOP/s": _three_digits(step["flops_per_second"] / 1e9),
              "of matmul": _percent(step["share_of_matmul"])}]
    single = generation["modes"]["one at a time"]["samples_per_second"]
    modes = [{"mode": mode, "batch size": str(m["batch_size"]), "samples": str(generation["samples"]),
              "s": _three_digits(m["seconds"]), "samples/s": _three_digits(m["samples_per_second"]),
              "speed-up": f"{m['samples_per_second'] / single:.2f}"} for mode, m in generation["modes"].items()]
    return "\n".join([
        f"# Throughput of a VanillaIT tuning step ({numbers['config']})",
        "",
        f"Model {numbers['model']}, batch {numbers['batch_size']}, torch threads: {numbers['threads']}; "
        f"{numbers['steps']} steps after {numbers['warmup_steps']} warm-up steps, "
        f"{numbers['images_encoded_per_step']:.1f} images encoded per step. FLOPs counted by "
        f"{numbers['flops_counted_by']} (matmuls, convolutions, attention; elementwise work uncounted).",
        "",
        markdown_table(phases),
        "",
        "## Against the machine's practical limit",
        "",
        markdown_table(limit),
        "",
        f"## Greedy generation of {generation['samples']} test samples "
        f"(up to {generation['max_new_tokens']} new tokens)",
        "",
        markdown_table(modes),
        "",
        f"The two agree on {generation['same_texts']} of {generation['samples']} texts.",
        "",
    ])


def _summary(numbers: dict[str, Any]) -> str:
    shares = ", ".join(f"{name} {_percent(p['share_of_step'])}" for name, p in numbers["phases"].items())
    step, matmul, generation = numbers["step"], numbers["matmul"], numbers["generation"]
    return (f"step {_three_digits(step['seconds_per_step'])} s ({shares}); "
            f"{_three_digits(step['flops_per_second'] / 1e9)} GFLOP/s, {_percent(step['share_of_matmul'])} of the "
            f"matmul's {_three_digits(matmul['flops_per_second'] / 1e9)} GFLOP/s; "
            f"batched generation {generation['speed_up']:.2f}x one at a time")


def run_throughput_benchmark(steps: int, overrides: Sequence[str], out: Path) -> Path:
    """Time and count VanillaIT's tuning step by phase over `steps` steps, the matmul reference
    and generation of one evaluation batch; write the tables to `out`, the numbers to `out`
    with suffix .json, and print a summary."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    config = packaged_config(["defenses/vanilla"], ["name=bench-throughput", *overrides])
    experiment = Experiment(config, progress=False)
    tuning = _prepare(experiment)
    batches = _batches(len(tuning.dataset), config.train, WARMUP_STEPS + steps)
    timed, counted = PhaseClock(), PhaseClock(FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS))
    step_seconds, encoded = _measure(tuning, batches, timed)
    _measure(tuning, batches, counted)
    numbers = {
        **_setting(experiment, steps, encoded),
        **_step_figures(timed, counted, step_seconds, matmul_flops_per_second()),
        "generation": _generation(tuning.model, experiment.test_samples[:config.eval.batch_size], tuning.features,
                                  config.eval.max_new_tokens),
    }
    write_atomic(out.with_suffix(".json"), json.dumps(numbers, indent=2) + "\n")
    write_atomic(out, _markdown(numbers))
    print(_summary(numbers), flush=True)
    return out
