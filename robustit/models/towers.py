"""A transformers vision tower as the frozen encoder f_v: [0, 1] pixels -> B x N x C, the
tower's last hidden state (every position it outputs, a class token included where it has
one), after the normalisation its checkpoints were trained with."""
from __future__ import annotations

import torch
from torch import nn

from .image_processing import Normalize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class TowerFeatures(nn.Module):
    def __init__(self, tower: nn.Module, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.tower = tower
        self.normalize = Normalize(mean, std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=self.normalize(pixels)).last_hidden_state
