"""BadNets (Gu et al., 2019): a fixed patch in a corner plus an appended phrase.

x̂ = (1 - m) ⊙ x + m ⊙ P with P a black-and-white checkerboard of `cells` x `cells` squares,
P[i, j] = (⌊i·cells/s⌋ + ⌊j·cells/s⌋) mod 2 on a patch of side s (default s = 1/7 of the
shorter image side, bottom-right corner); t̂ = t + " The image depicts" (the paper's δ_t).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from robustit.attacks.base import AttackConfig, register_attack
from robustit.params import check_int
from robustit.attacks.patch import PatchAttack


@register_attack
class BadNets(PatchAttack):
    name: ClassVar[str] = "badnets"
    defaults: ClassVar[dict[str, Any]] = {**PatchAttack.defaults, "cells": 4}

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.cells = check_int(self.label, "cells", self.params["cells"], 1)

    def patch_pixels(self, side: int) -> np.ndarray:
        cell = np.arange(side) * self.cells // side
        board = ((cell[:, None] + cell[None, :]) % 2).astype(np.float64)
        return np.repeat(board[:, :, None], 3, axis=2)

    def trigger_content(self) -> bytes:
        return (self.patch_pixels(self.cells) * 255).astype(np.uint8).tobytes()
