"""An exponential moving average (EMA) of a model's trainable tensors, kept as shadow copies
beside the model (no second model is built):

    θ̄ <- θ                               when made (the weights as they are then)
    θ̄ <- d θ̄ + (1 - d) θ                 at each `update`, d = `decay`

`swapped_in()` exchanges θ̄ and the model's own θ for the duration of a block (to generate
with the EMA weights) and exchanges them back after it, one tensor at a time, so the only
extra memory is the shadow copies.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from robustit.models.base import VisionLanguageModel


class ExponentialMovingAverage:
    """Shadow copies of `model`'s trainable tensors, averaged with `decay`."""

    def __init__(self, model: VisionLanguageModel, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        """θ̄ <- decay θ̄ + (1 - decay) θ."""
        for shadow, parameter in zip(self.shadow, self.parameters):
            shadow.lerp_(parameter.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def _exchange(self) -> None:
        for shadow, parameter in zip(self.shadow, self.parameters):
            held = parameter.detach().clone()
            parameter.copy_(shadow)
            shadow.copy_(held)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the EMA weights inside the block, its tuned weights after it."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()
