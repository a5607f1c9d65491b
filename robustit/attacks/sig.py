"""SIG (Barni et al., 2019; the paper's "SIG", Tran et al., 2018): an additive horizontal sinusoid.

x̂[i, j, c] = clip(x[i, j, c] + Δ sin(2π j f / W), 0, 1) for every row i and channel c of an
H x W image, with amplitude Δ = 20/255 and frequency f = 6 (periods across the width) by
default, so the trigger is the same vertical stripe pattern at any resolution.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from robustit.attacks.additive import AdditiveAttack
from robustit.attacks.base import AttackConfig, register_attack
from robustit.params import check_number


@register_attack
class SIG(AdditiveAttack):
    name: ClassVar[str] = "sig"
    defaults: ClassVar[dict[str, Any]] = {"amplitude": 20 / 255, "frequency": 6}

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.amplitude = check_number(self.label, "amplitude", self.params["amplitude"], 0.0, 1.0)
        self.frequency = check_number(self.label, "frequency", self.params["frequency"], 0.0, math.inf)

    def residual(self, height: int, width: int, key: str) -> np.ndarray:
        wave = self.amplitude * np.sin(2.0 * np.pi * np.arange(width) * self.frequency / width)
        return wave[None, :, None]
