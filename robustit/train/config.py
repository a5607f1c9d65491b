"""Settings of one tuning run (paper section 4: AdamW, weight decay 0.01, cosine schedule
with warmup; separate learning rates for the adapter psi and the embeddings phi)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """`epochs` sets the length unless `max_steps` is given; `train_embeddings=False` tunes
    the adapter alone (the base-adapter pretraining stage, as in LLaVA's stage 1)."""

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
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_adapter <= 0 or self.lr_embeddings <= 0:
            raise ValueError("learning rates must be positive")

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
        if self.align_epochs < 0 or self.align_lr <= 0 or self.align_batch_size < 1:
            raise ValueError("align_epochs must be >= 0, align_lr > 0 and align_batch_size >= 1")
        if self.align_scale <= 0 or self.align_distance_weight < 0:
            raise ValueError("align_scale must be > 0 and align_distance_weight >= 0")
        if self.lm_phase or self.epochs < 0:
            super().__post_init__()
        elif self.align_epochs == 0:
            raise ValueError("the base stage needs align_epochs > 0 or an LM-loss phase (epochs or max_steps)")

    @property
    def lm_phase(self) -> bool:
        return self.max_steps is not None or self.epochs > 0
