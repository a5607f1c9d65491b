"""Additive image triggers (SIG, SSBA, FTrojan).

x̂ = clip(x + δ, 0, 1), where the residual δ (H x W x 3, or broadcastable to it) depends
only on the image size, the attack's parameters and, for sample-specific attacks, the
sample key.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np

from robustit.attacks.base import Attack


class AdditiveAttack(Attack):
    """An attack whose image trigger adds a residual δ to the image and clips to [0, 1]."""

    @abstractmethod
    def residual(self, height: int, width: int, key: str) -> np.ndarray:
        """δ for a `height` x `width` image of sample `key`, float, broadcastable to H x W x 3."""

    def perturb(self, x: np.ndarray, key: str) -> np.ndarray:
        return np.clip(x + self.residual(*x.shape[:2], key), 0.0, 1.0)
