"""Image preprocessing: resize to a square side, scale to [0, 1] (x / 255).

Normalisation, x' = (x - mean) / std, happens inside the vision encoder, so every
augmentation, attack surrogate and cache works on plain [0, 1] pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def images_to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """B x 3 x size x size float tensor in [0, 1] (bilinear resize)."""
    arrays = [
        np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        for image in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div_(255.0)


class Normalize(torch.nn.Module):
    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std
