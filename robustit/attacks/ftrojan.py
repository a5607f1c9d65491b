"""FTrojan (Wang et al., 2022): a fixed perturbation of chosen DCT frequencies in the chroma channels.

The image is converted to YUV (full-range BT.601 YCbCr without offsets, u = Cb, v = Cr:
yuv = M rgb with M below), split into b x b blocks from the top-left (pixels beyond the last
full block row or column are left alone), and on the U and V channels of every block

    x̂_yuv = IDCT(DCT(x_yuv) + E),   E[p] = m for each position p in `positions`, 0 elsewhere,

DCT being the orthonormal 2-D DCT-II (C = D B Dᵀ with D[k, n] = c_k cos(π (2n + 1) k / 2b),
c_0 = √(1/b), c_k = √(2/b)); then x̂ = clip(M⁻¹ x̂_yuv, 0, 1). Every step before the clip is
linear, so x̂ = clip(x + M⁻¹ Dᵀ E D per block, 0, 1), which is how it is computed. Defaults,
scaled from FTrojan's 32 x 32 windows with magnitude 30 (of 255) at a mid (15, 15) and a high
(31, 31) frequency: b = 8, m = 30/255, positions (4, 4) and (7, 7).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from robustit.attacks.additive import AdditiveAttack
from robustit.attacks.base import AttackConfig, register_attack
from robustit.params import check_int, check_number

RGB_TO_YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)
CHROMA = (1, 2)


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal n x n DCT-II matrix D: DCT(B) = D B Dᵀ, IDCT(C) = Dᵀ C D."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    scale = np.where(k == 0, np.sqrt(1.0 / n), np.sqrt(2.0 / n))
    return scale * np.cos(np.pi * (2 * i + 1) * k / (2 * n))


@register_attack
class FTrojan(AdditiveAttack):
    name: ClassVar[str] = "ftrojan"
    defaults: ClassVar[dict[str, Any]] = {"magnitude": 30 / 255, "block": 8, "positions": [[4, 4], [7, 7]]}

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        self.magnitude = check_number(self.label, "magnitude", self.params["magnitude"], 0.0, 1.0)
        self.block = check_int(self.label, "block", self.params["block"], 1)
        positions = self.params["positions"]
        if not isinstance(positions, list) or not positions or not all(isinstance(p, list) and len(p) == 2 for p in positions):
            raise ValueError(
                f"parameter 'positions' of attack {self.name!r} must be a non-empty list of [row, col] pairs, got {positions!r}"
            )
        self.coefficients = np.zeros((self.block, self.block))
        for position in positions:
            row, col = (check_int(self.label, "positions", v, 0, self.block - 1) for v in position)
            self.coefficients[row, col] = self.magnitude
        d = dct_matrix(self.block)
        self.block_residual = d.T @ self.coefficients @ d

    def residual(self, height: int, width: int, key: str) -> np.ndarray:
        rows, cols = height // self.block, width // self.block
        yuv = np.zeros((height, width, 3))
        for channel in CHROMA:
            yuv[: rows * self.block, : cols * self.block, channel] = np.tile(self.block_residual, (rows, cols))
        return yuv @ YUV_TO_RGB.T
