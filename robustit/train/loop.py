"""The tuning loop on Accelerate: only psi (adapter) and phi (input embedding, lm_head) move,
and the LoRA weights of a model given LoRA layers (`model.lora`, outside the paper's threat
model).

Each step draws a batch of samples, looks up frozen features f_v(x) in the cache, and
minimises the completion-only loss L_it of `VisionLanguageModel.forward` with AdamW
(weight decay on every trainable tensor), a linear warmup over `warmup_ratio` of the steps
followed by a cosine decay to 0, and gradient clipping at `max_grad_norm`:

    lr_t = lr * t / w                                   for t < w
    lr_t = lr * 0.5 * (1 + cos(pi * (t - w) / (T - w)))  otherwise.

With a defense (`robustit.defenses.base`), each step's objective is
L = sum_v lm_weight_v * L_it(v) + sum_k term_k over the defense's views and loss terms; the
defense sees the training set and every batch only as stripped samples (no poison
information), and its adapter hook stays registered from `prepare` to `finalize`. Every drawn
sample passes the defense's `training_sample` before its views are built (a data-side defense
replaces responses or leaves samples out there); a batch left empty is skipped without a step.
`curate` runs before the first step and after every optimizer step, with the loop's state.

Every `train.checkpoint_every` steps the loop writes a checkpoint holding what resuming needs
(`robustit.train.resume`) and keeps the last `KEPT_CHECKPOINTS` of them (the one before the
last is the fallback should the last be damaged); `resume=True` continues from the last whole
one, a resumed defense taking back its training state in place of `curate` at step 0.

Under `accelerate launch` with several processes the loop runs data-parallel
(`robustit.train.parallel`): `batch_size` stays the global batch, each process trains on its
slice of every global batch, DDP averages the gradients, the step count and schedule are one
process's, the recorded LM loss is the global batch's and only the main process writes to the
run directory; defenses other than test-time-only ones and resuming are refused there.
"""
from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.scheduler import AcceleratedScheduler
from accelerate.utils import DataLoaderConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseBatch, TuningState, View, stripped_dataset
from robustit.models.base import LMOutput, VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.rundir import RunDirectory
from robustit.train.config import TrainConfig
from robustit.train.parallel import DataParallel, check_set_up, process_state, refuse
from robustit.train.resume import LoopState, restore, training_state

log = logging.getLogger(__name__)
KEPT_CHECKPOINTS = 2
CURVE_POINTS = 50


@dataclass
class TrainResult:
    """`losses` holds the LM loss of each step, `loss_terms` each defense term per step.
    `forward_passes` counts passes through the tuned model (whole-model forwards plus the
    defense's own passes); `extra_forward_passes` is what that adds to one per step.
    `shared_from` names the shared VanillaIT tuning read back in place of tuning
    (`robustit.train.shared`), None where this tuning ran."""

    steps: int
    losses: list[float]
    seconds: float
    seconds_per_step: float
    samples_per_second: float
    peak_memory_mb: float
    forward_passes: int
    extra_forward_passes: int = 0
    loss_terms: dict[str, list[float]] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    shared_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def mean_loss_terms(self) -> dict[str, float]:
        return {name: sum(values) / len(values) for name, values in self.loss_terms.items()}

    def summary(self) -> dict[str, Any]:
        """The cost figures, the final LM loss, each defense term's mean, the `curves` and,
        where set, `shared_from` (metrics.json's "train")."""
        out = {k: v for k, v in self.as_dict().items()
               if k not in ("audit", "losses", "loss_terms") and not (k == "shared_from" and v is None)}
        return {**out, "final_loss": self.losses[-1], "loss_terms": self.mean_loss_terms(),
                "curves": loss_curves(self.losses, self.loss_terms)}


def loss_curves(losses: Sequence[float], loss_terms: dict[str, list[float]], points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """The LM loss and each defense term recorded on every step over tuning, in at most
    `points` points: the T steps cut into n = min(points, T) consecutive windows of floor or
    ceil of T / n steps, each point the window's mean, at "step" = the window's last step."""
    count = min(points, len(losses))
    edges = [round(i * len(losses) / count) for i in range(count + 1)]
    curves = {"step": [float(end) for end in edges[1:]]}
    every_step = {name: values for name, values in loss_terms.items() if len(values) == len(losses)}
    for name, values in {"lm": list(losses), **every_step}.items():
        curves[name] = [round(statistics.fmean(values[a:b]), 6) for a, b in zip(edges, edges[1:])]
    return curves


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gradient_audit(model: VisionLanguageModel) -> dict[str, Any]:
    """The parameter audit plus the names of frozen tensors that received a gradient
    (must be empty) and of trainable ones that did not."""
    audit = model.parameter_audit()
    audit["frozen_with_grad"] = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    audit["trainable_without_grad"] = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return audit


def set_trainable(model: VisionLanguageModel, embeddings: bool) -> None:
    """Adapter always; input embedding, lm_head and the LoRA weights (where the model has
    LoRA layers) only when `embeddings`."""
    model.decoder.get_input_embeddings().requires_grad_(embeddings)
    model.lm_head.requires_grad_(embeddings)
    for p in model.trainable_groups().get("lora", []):
        p.requires_grad_(embeddings)


def prepare_tuning(
    model: VisionLanguageModel, config: TrainConfig, total: int
) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer, AcceleratedScheduler]:
    """(accelerator, module, optimizer, scheduler) of a tuning of `total` steps: the model made
    trainable as `config` says, AdamW (fused where `fused_adamw_supported`) over its adapter
    group (and embeddings group, and LoRA group at the adapter's learning rate where the model
    has LoRA layers) and the warmup-cosine schedule, prepared by a fresh Accelerator whose
    schedule steps once per global batch (`split_batches`) and refuses set-ups other than DDP
    (`check_set_up`). `module` is the model as prepared: itself in one process, DDP-wrapped
    across several."""
    set_trainable(model, config.train_embeddings)
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True))
    check_set_up(accelerator)
    groups = model.trainable_groups()
    param_groups = [{"params": groups["adapter"], "lr": config.lr_adapter}]
    if config.train_embeddings:
        param_groups.append({"params": groups["embeddings"], "lr": config.lr_embeddings})
        if "lora" in groups:
            param_groups.append({"params": groups["lora"], "lr": config.lr_adapter})
    optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay, fused=fused_adamw_supported(model))
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total), total)
    module, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, module, optimizer, scheduler


def fused_adamw_supported(model: torch.nn.Module) -> bool:
    """Whether every parameter lives where torch has a fused AdamW kernel (CPU, CUDA): one
    kernel over all tensors instead of a per-tensor loop; on the mini model, whose trainable
    embedding table holds 28M parameters, the optimizer phase falls from 0.32 s to 0.08 s a
    step (`robustit bench throughput --threads 2`)."""
    return all(p.device.type in ("cpu", "cuda") for p in model.parameters())


def index_loader(size: int, config: TrainConfig) -> DataLoader:
    """Batches of `config.batch_size` shuffled indices into `size` samples, seeded by
    `config.seed`; the last short batch is dropped unless there is no whole one."""
    return DataLoader(
        range(size),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=size >= config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=list,
    )


def optimizer_step(accelerator: Accelerator, model: VisionLanguageModel, optimizer: torch.optim.Optimizer,
                   scheduler: AcceleratedScheduler, max_grad_norm: float) -> None:
    """Clip the trainable gradients to `max_grad_norm`, step the optimizer and the schedule,
    and clear the gradients."""
    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _forward_views(model: VisionLanguageModel, views: list[View], features: FeatureCache,
                   module: torch.nn.Module) -> dict[str, LMOutput]:
    """Fill each view's features; run the whole model (through `module`) on the forwarded ones."""
    outputs: dict[str, LMOutput] = {}
    for view in views:
        view.features = features.features(view.images)
        if view.forward:
            outputs[view.name] = module(model.encode_prompts(view.instructions, view.responses), view.features)
    return outputs


def tuning_objective(
    model: VisionLanguageModel, samples: list[Sample], features: FeatureCache, defense: Defense | None,
    parallel: DataParallel | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], int]:
    """(objective, LM loss, defense terms, whole-model passes) of one batch; under `parallel`,
    of this process's slice, its LM loss weighted for DDP's average and the recorded LM loss
    the global batch's."""
    views = [View.of("original", samples)]
    if defense is not None:
        views = defense.augment(DefenseBatch(samples, {"original": views[0]}))
    outputs = _forward_views(model, views, features, model if parallel is None else parallel.module)
    losses = [(view.lm_weight, outputs[view.name]) for view in views if view.lm_weight]
    if not losses:
        raise ValueError(f"no view of {[view.name for view in views]} carries the LM loss (all lm_weight 0)")
    if parallel is None:
        weighted = [weight * output.loss for weight, output in losses]
        objective = lm_loss = sum(weighted[1:], weighted[0])
    else:
        shares = [(weight, *parallel.lm_loss(output)) for weight, output in losses]
        objective = sum(weight * share for weight, share, _ in shares)
        lm_loss = sum(weight * mean for weight, _, mean in shares)
    terms = {} if defense is None else defense.loss(model, DefenseBatch(samples, {v.name: v for v in views}), outputs)
    return sum(terms.values(), objective), lm_loss, terms, len(outputs)


def _epoch_batches(loader: DataLoader, loop: LoopState) -> Iterator[list[int]]:
    """The current epoch's batches from `loop.batches` on, counted into `loop`: a fresh
    epoch notes the loader generator's state; a resumed one restores it and skips the
    batches drawn before, so it draws the same order."""
    generator = loader.generator
    if loop.batches == 0:
        loop.epoch_generator, loop.epoch_first_step = generator.get_state(), loop.step
    else:
        generator.set_state(loop.epoch_generator)
    batches = iter(loader)
    for _ in range(loop.batches):
        next(batches)
    for indices in batches:
        loop.batches += 1
        yield indices
    loop.batches = 0


def train(
    model: VisionLanguageModel,
    dataset: Sequence[Sample],
    config: TrainConfig,
    run_dir: RunDirectory | None = None,
    features: FeatureCache | None = None,
    progress: bool = True,
    defense: Defense | None = None,
    resume: bool = False,
) -> TrainResult:
    """Tune `model` in place on `dataset`, under `defense` if given; writes checkpoints and
    the tuning's record to `run_dir` when given. With `resume`, a run directory whose tuning
    finished gives back its tuned model and record, and one holding intermediate checkpoints
    continues from the last whole one (`robustit.train.resume`). Under a data-parallel launch
    (`robustit.train.parallel`) only the main process writes to `run_dir`."""
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    processes = process_state().num_processes
    refuse(defense, resume, processes)
    if resume and run_dir is None:
        raise ValueError("resuming needs the run directory of the interrupted run")
    if resume and run_dir.tuning_finished():
        run_dir.load_checkpoint(model, defense)
        return TrainResult(**run_dir.load_train_result())
    seed_everything(config.seed)
    features = features if features is not None else FeatureCache(model)
    total = config.total_steps(len(dataset))
    accelerator, module, optimizer, scheduler = prepare_tuning(model, config, total)
    parallel = DataParallel(accelerator, module) if processes > 1 else None
    if parallel is not None:
        parallel.check_batch(min(config.batch_size, len(dataset)))
    written = run_dir if accelerator.is_main_process else None
    loader = index_loader(len(dataset), config)
    defense_passes = defense.extra_forward_passes if defense is not None else 0
    start = time.perf_counter()
    samples_of: Sequence[Sample] = dataset
    remove_hook: Callable[[], None] | None = None
    tuning_state = partial(TuningState, model, features, steps_per_epoch=len(loader), total_steps=total,
                           batch_size=config.batch_size, progress=progress)
    checkpoint = run_dir.latest_checkpoint() if resume else None
    loop = LoopState()
    if defense is not None:
        samples_of = stripped_dataset(dataset)
        defense.prepare(model, samples_of)
        if checkpoint is None:
            defense.curate(tuning_state(step=0))
    if checkpoint is not None:
        log.info("resuming %s from its checkpoint at step %d of %d", run_dir, checkpoint, total)
        loop = restore(run_dir.load_checkpoint(model, defense, checkpoint), optimizer, scheduler, defense, model)
    if defense is not None:
        remove_hook = model.add_adapter_hook(defense.adapter_hook)
    module.train()
    bar = tqdm(total=total, initial=loop.step, desc="tuning", disable=not (progress and accelerator.is_main_process),
               unit="step")
    try:
        while loop.step < total:
            for indices in _epoch_batches(loader, loop):
                samples = [samples_of[i] for i in (indices if parallel is None else parallel.shard(indices))]
                if defense is not None:
                    samples = [s for s in map(defense.training_sample, samples) if s is not None]
                    if not samples:
                        continue
                objective, lm_loss, terms, forwarded = tuning_objective(model, samples, features, defense, parallel)
                accelerator.backward(objective)
                if loop.step == 0:
                    loop.audit = gradient_audit(model)
                optimizer_step(accelerator, model, optimizer, scheduler, config.max_grad_norm)
                loop.step += 1
                loop.passes += forwarded
                loop.losses.append(float(lm_loss.detach()))
                for name, term in terms.items():
                    loop.loss_terms.setdefault(name, []).append(float(term.detach()))
                if defense is not None:
                    defense.curate(tuning_state(step=loop.step))
                    defense.after_step(loop.step)
                bar.update(1)
                bar.set_postfix(loss=f"{loop.losses[-1]:.3f}")
                if written is not None and config.checkpoint_every and loop.step % config.checkpoint_every == 0:
                    elapsed = replace(loop, seconds=loop.seconds + time.perf_counter() - start)
                    state = training_state(elapsed, optimizer, scheduler, defense)
                    written.save_checkpoint(model, defense, loop.step, state)
                    written.prune_checkpoints(KEPT_CHECKPOINTS)
                if loop.step >= total:
                    break
            if loop.step == loop.epoch_first_step and loop.batches == 0:
                raise ValueError(f"defense {defense.name!r} left every training sample out (training_sample gave None)")
        if defense is not None:
            defense.finalize(model)
    finally:
        if remove_hook is not None:
            remove_hook()
    bar.close()
    seconds = loop.seconds + time.perf_counter() - start
    model.eval()
    passes = loop.passes + (defense.extra_forward_passes - defense_passes if defense is not None else 0)
    result = TrainResult(
        steps=loop.step,
        losses=loop.losses,
        seconds=seconds,
        seconds_per_step=seconds / loop.step,
        samples_per_second=loop.step * config.batch_size / seconds,
        peak_memory_mb=_peak_memory_mb(),
        forward_passes=passes,
        extra_forward_passes=passes - loop.step,
        loss_terms=loop.loss_terms,
        audit=loop.audit,
    )
    if written is not None:
        save_tuning(written, model, defense, result)
    return result


def save_tuning(run_dir: RunDirectory, model: VisionLanguageModel, defense: Defense | None, result: TrainResult) -> None:
    """The end of a tuning in `run_dir`: the final checkpoint, the defense's flags, the record."""
    run_dir.save_checkpoint(model, defense)
    flags = defense.flags() if defense is not None else []
    if flags:
        run_dir.save_flags(flags)
    run_dir.save_train_result(result.as_dict())
