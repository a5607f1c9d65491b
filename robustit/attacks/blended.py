"""Blended (Chen et al., 2017): whole-image alpha blend with a fixed trigger image.

x̂ = (1 - α) x + α T, α = 0.15 by default. T replaces the paper's external picture with a
deterministic one: a `grid` x `grid` RGB noise image drawn from numpy's RandomState(trigger_seed)
(uniform in [0, 255]), upsampled bilinearly to the image's size, so the same trigger covers
any resolution and nothing is downloaded.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image

from robustit.attacks.base import Attack, AttackConfig, register_attack, seeded_pattern
from robustit.params import check_int, check_number


@register_attack
class Blended(Attack):
    name: ClassVar[str] = "blended"
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.15, "grid": 8, "trigger_seed": 0}

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.alpha = check_number(self.label, "alpha", self.params["alpha"], 0.0, 1.0)
        grid = check_int(self.label, "grid", self.params["grid"], 1)
        seed = check_int(self.label, "trigger_seed", self.params["trigger_seed"], 0, 2**32 - 1)
        self.pattern = seeded_pattern(seed, grid, grid)

    def trigger_image(self, height: int, width: int) -> np.ndarray:
        """T at `height` x `width`, float in [0, 1]."""
        image = Image.fromarray(self.pattern, "RGB").resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float64) / 255.0

    def perturb(self, x: np.ndarray, key: str) -> np.ndarray:
        return (1.0 - self.alpha) * x + self.alpha * self.trigger_image(*x.shape[:2])

    def trigger_content(self) -> bytes:
        return self.pattern.tobytes()
