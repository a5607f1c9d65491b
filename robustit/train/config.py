"""Settings of one tuning run (paper section 4: AdamW, weight decay 0.01, cosine schedule
with warmup; separate learning rates for the adapter psi and the embeddings phi)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from robustit.params import FieldError, check_int, check_number


@dataclass
class TrainConfig:
    """`epochs` sets the length unless `max_steps` is given; `train_embeddings=False` tunes
    the adapter alone (the base-adapter pretraining stage, as in LLaVA's stage 1), leaving
    the LoRA weights of a model with LoRA layers (`model.lora`) frozen too; they train with
    the embeddings, at `lr_adapter`.
    `checkpoint_every` > 0 writes a checkpoint every that many steps, with everything a
    killed run needs to resume from it exactly (`robustit run --resume`); the last two are kept."""

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    lr_adapter: float = 2e-4
    lr_embeddings: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    train_embeddings: bool = True
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        check_int(None, "batch_size", self.batch_size, 1)
        if self.max_steps is None:
            check_number(None, "epochs", self.epochs, 0.0, math.inf, low_open=True)
        else:
            check_int(None, "max_steps", self.max_steps, 1)
        if check_number(None, "warmup_ratio", self.warmup_ratio, 0.0, 1.0) == 1.0:
            raise FieldError("warmup_ratio", "must be below 1 (a schedule that never leaves its warmup), got 1.0")
        for key in ("lr_adapter", "lr_embeddings", "max_grad_norm"):
            check_number(None, key, getattr(self, key), 0.0, math.inf, low_open=True)
        check_number(None, "weight_decay", self.weight_decay, 0.0, math.inf)
        check_int(None, "seed", self.seed, 0)
        check_int(None, "checkpoint_every", self.checkpoint_every, 0)

    def total_steps(self, n_samples: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        steps_per_epoch = -(-n_samples // self.batch_size)
        return max(1, round(self.epochs * steps_per_epoch))


@dataclass
class PretrainConfig(TrainConfig):
    """The base stage (`robustit.train.base_adapter`): `align_epochs` of word-embedding
    alignment of the adapter (`robustit.train.align`, batch `align_batch_size`, learning
    rate `align_lr`, cosine-logit scale `align_scale`, weight `align_distance_weight` of the
    term pulling each token onto its word's embedding), then LM-loss pretraining of the adapter alone
    with the TrainConfig settings; `epochs=0` leaves the LM-loss phase out."""

    train_embeddings: bool = False
    align_epochs: float = 0.0
    align_lr: float = 1e-3
    align_batch_size: int = 64
    align_scale: float = 20.0
    align_distance_weight: float = 16.0

    def __post_init__(self) -> None:
        check_number(None, "align_epochs", self.align_epochs, 0.0, math.inf)
        check_number(None, "align_lr", self.align_lr, 0.0, math.inf, low_open=True)
        check_int(None, "align_batch_size", self.align_batch_size, 1)
        check_number(None, "align_scale", self.align_scale, 0.0, math.inf, low_open=True)
        check_number(None, "align_distance_weight", self.align_distance_weight, 0.0, math.inf)
        if self.lm_phase or self.epochs < 0:
            super().__post_init__()
        elif self.align_epochs == 0:
            raise FieldError("align_epochs", "the base stage needs align_epochs > 0 or an LM-loss phase (epochs or max_steps)")

    @property
    def lm_phase(self) -> bool:
        return self.max_steps is not None or self.epochs > 0
