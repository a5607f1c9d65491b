"""Pooled image views for defenses whose views are fixed per image (IDR's, the cross-view
defense's): the encoder is frozen, so each image has `count` views, view k of the image with
content hash h drawn by `make` from a generator seeded by (seed, h, k); a step picks one with
the defense's random generator, and the feature cache, keyed by content, encodes each once."""
from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

import torch
from PIL import Image

from robustit.models.features import image_key
from robustit.models.image_processing import images_to_tensor

MakeView = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def to_image(pixels: torch.Tensor) -> Image.Image:
    """3 x H x W [0, 1] pixels as an RGB image (rounded to uint8)."""
    return Image.fromarray((pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def run_seed(seed: int | None) -> int:
    """A defense's `seed` setting, or with null torch's seed, which `train` sets to train.seed."""
    return torch.initial_seed() if seed is None else seed


def view_seed(seed: int, key: str, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:{k}".encode()).digest()[:8], "little")


class ViewPool:
    """`count` views per image made by `make` (module docstring), and the defense's random
    generator `rng`, which picks the view of each step (and whatever else the defense draws)."""

    def __init__(self, owner: str, count: int, make: MakeView) -> None:
        self.owner = owner
        self.count = count
        self.make = make
        self.rng = random.Random()
        self.seed = 0
        self.size: int | None = None
        self._views: dict[tuple[str, int], Image.Image] = {}

    def reset(self, size: int, seed: int | None) -> None:
        """Views at `size` x `size`, seeded by `seed` (`run_seed`); views made before are dropped."""
        self.size = size
        self.seed = run_seed(seed)
        self.rng.seed(self.seed)
        self._views.clear()

    def view(self, image: Image.Image) -> Image.Image:
        """One of `image`'s `count` views, made on first use."""
        if self.size is None:
            raise RuntimeError(f"{self.owner}.prepare(model, dataset) must run before views are drawn")
        key = (image_key(image), self.rng.randrange(self.count))
        if key not in self._views:
            pixels = images_to_tensor([image], self.size)[0]
            self._views[key] = to_image(self.make(pixels, torch.Generator().manual_seed(view_seed(self.seed, *key))))
        return self._views[key]

    def state(self) -> list[Any]:
        """`rng`'s state as JSON values (for a defense's training_state)."""
        version, internal, gauss = self.rng.getstate()
        return [version, list(internal), gauss]

    def load_state(self, state: list[Any]) -> None:
        version, internal, gauss = state
        self.rng.setstate((version, tuple(internal), gauss))
