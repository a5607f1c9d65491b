"""The tuning loop on Accelerate: only psi (adapter) and phi (input embedding, lm_head) move.

Each step draws a batch of samples, looks up frozen features f_v(x) in the cache, and
minimises the completion-only loss L_it of `VisionLanguageModel.forward` with AdamW
(weight decay on every trainable tensor), a linear warmup over `warmup_ratio` of the steps
followed by a cosine decay to 0, and gradient clipping at `max_grad_norm`:

    lr_t = lr * t / w                                   for t < w
    lr_t = lr * 0.5 * (1 + cos(pi * (t - w) / (T - w)))  otherwise.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from robustit.data.sample import Sample
from robustit.models.base import VisionLanguageModel
from robustit.train.config import TrainConfig
from robustit.train.features import FeatureCache


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    seconds: float
    seconds_per_step: float
    samples_per_second: float
    peak_memory_mb: float
    forward_passes: int
    audit: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    """Adapter always; input embedding and lm_head only when `embeddings`."""
    model.decoder.get_input_embeddings().requires_grad_(embeddings)
    model.lm_head.requires_grad_(embeddings)


def train(
    model: VisionLanguageModel,
    dataset: Sequence[Sample],
    config: TrainConfig,
    run_dir: str | Path | None = None,
    features: FeatureCache | None = None,
    progress: bool = True,
) -> TrainResult:
    """Tune `model` in place on `dataset`; writes checkpoints and the audit under `run_dir`."""
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    seed_everything(config.seed)
    set_trainable(model, config.train_embeddings)
    features = features or FeatureCache(model)
    accelerator = Accelerator()
    groups = model.trainable_groups()
    param_groups = [{"params": groups["adapter"], "lr": config.lr_adapter}]
    if config.train_embeddings:
        param_groups.append({"params": groups["embeddings"], "lr": config.lr_embeddings})
    optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
    total = config.total_steps(len(dataset))
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total), total)
    loader = DataLoader(
        range(len(dataset)),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=list,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run_dir = Path(run_dir) if run_dir is not None else None
    losses: list[float] = []
    audit: dict[str, Any] = {}
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, desc="tuning", disable=not progress, unit="step")
    step = 0
    while step < total:
        for indices in loader:
            samples = [dataset[i] for i in indices]
            batch = model.encode_prompts([s.instruction for s in samples], [s.response for s in samples])
            output = model(batch, features.features([s.image for s in samples]))
            accelerator.backward(output.loss)
            if step == 0:
                audit = gradient_audit(model)
            accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(output.loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if run_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                model.save_trainable(run_dir / f"checkpoint-{step}")
            if step >= total:
                break
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    result = TrainResult(
        steps=step,
        losses=losses,
        seconds=seconds,
        seconds_per_step=seconds / step,
        samples_per_second=step * config.batch_size / seconds,
        peak_memory_mb=_peak_memory_mb(),
        forward_passes=step,
        audit=audit,
    )
    if run_dir is not None:
        model.save_trainable(run_dir / "checkpoint")
        (run_dir / "audit.json").write_text(json.dumps(audit, indent=2) + "\n")
    return result
