"""SSBA (Li et al., 2021), stand-in: a sample-specific, near-invisible sparse residual.

The original SSBA encodes a string into each image with a pretrained StegaStamp
encoder-decoder; no such encoder is available offline, so this attack keeps SSBA's defining
properties (a residual that differs per sample and stays imperceptible) with a keyed one:
for sample key k, a generator seeded with sha256("<trigger_seed>:<k>") picks
n = round(ρ H W) pixel positions S (without replacement) and a sign s[i, j, c] ∈ {-1, +1}
for each picked pixel and channel, and

    x̂[i, j, c] = clip(x[i, j, c] + a s[i, j, c] [(i, j) ∈ S], 0, 1),

with amplitude a = 10/255 and density ρ = 0.1 by default. Before clipping the mean squared
error is ρ a², so PSNR = -10 log10(ρ a²) ≈ 38 dB by default (at least 30 dB whenever
ρ a² ≤ 1e-3). The same key always gives the same residual, so a test-time sample is
triggered with its own residual; different keys give different ones. The trigger content
hashed into the manifest is the residual of a fixed probe key, which catches a change of the
random generator as well as of the parameters.
"""
from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np

from robustit.attacks.additive import AdditiveAttack
from robustit.attacks.base import AttackConfig, register_attack
from robustit.params import check_int, check_number

PROBE = ("", 8, 8)


@register_attack
class SSBA(AdditiveAttack):
    name: ClassVar[str] = "ssba"
    defaults: ClassVar[dict[str, Any]] = {"amplitude": 10 / 255, "density": 0.1, "trigger_seed": 0}

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.amplitude = check_number(self.label, "amplitude", self.params["amplitude"], 0.0, 1.0)
        self.density = check_number(self.label, "density", self.params["density"], 0.0, 1.0)
        self.trigger_seed = check_int(self.label, "trigger_seed", self.params["trigger_seed"], 0, 2**32 - 1)

    def residual(self, height: int, width: int, key: str) -> np.ndarray:
        digest = hashlib.sha256(f"{self.trigger_seed}:{key}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        picked = rng.permutation(height * width)[: round(self.density * height * width)]
        signs = rng.integers(0, 2, size=(len(picked), 3)) * 2 - 1
        delta = np.zeros((height * width, 3))
        delta[picked] = self.amplitude * signs
        return delta.reshape(height, width, 3)

    def trigger_content(self) -> bytes:
        key, height, width = PROBE
        return self.residual(height, width, key).tobytes()
