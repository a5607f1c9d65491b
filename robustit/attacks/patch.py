"""Corner-patch image triggers (BadNets, TrojVQA, VLTrojan).

x̂ = (1 - m) ⊙ x + m ⊙ P, where m is a square mask of side round(patch_fraction * min(H, W))
(at least one pixel) in one corner and P the attack's pattern resized to that side, so the
trigger covers the same share of the image at any resolution.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np

from robustit.attacks.base import Attack, AttackConfig
from robustit.params import check_number

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class PatchAttack(Attack):
    """An attack whose image trigger is a square pattern pasted onto a corner."""

    defaults: ClassVar[dict[str, Any]] = {"patch_fraction": 1 / 7, "corner": "bottom-right"}

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.patch_fraction = check_number(self.label, "patch_fraction", self.params["patch_fraction"], 0.0, 1.0)
        if self.patch_fraction == 0.0:
            raise ValueError(f"parameter 'patch_fraction' of attack {self.name!r} must be positive")
        self.corner = self.params["corner"]
        if self.corner not in CORNERS:
            raise ValueError(f"parameter 'corner' of attack {self.name!r} must be one of {CORNERS}, got {self.corner!r}")

    def corner_origin(self, height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
        """(top, left) of a `rows` x `cols` box in the chosen corner of a `height` x `width` image."""
        top = 0 if self.corner.startswith("top") else height - rows
        left = 0 if self.corner.endswith("left") else width - cols
        return top, left

    def patch_box(self, height: int, width: int) -> tuple[int, int, int]:
        """(top, left, side) of the patch on a `height` x `width` image."""
        side = max(1, round(self.patch_fraction * min(height, width)))
        return (*self.corner_origin(height, width, side, side), side)

    @abstractmethod
    def patch_pixels(self, side: int) -> np.ndarray:
        """The pattern P as a float side x side x 3 array in [0, 1]."""

    def perturb(self, x: np.ndarray, key: str) -> np.ndarray:
        top, left, side = self.patch_box(*x.shape[:2])
        out = x.copy()
        out[top : top + side, left : left + side] = self.patch_pixels(side)
        return out
