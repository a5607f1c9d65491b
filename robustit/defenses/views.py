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


def pooled_view(pool: dict[tuple[str, int], Image.Image], rng: random.Random, seed: int, count: int,
                image: Image.Image, size: int, make: MakeView) -> Image.Image:
    """One of `image`'s `count` pooled views at `size` x `size`, made (and kept in `pool`) on first use."""
    key = (image_key(image), rng.randrange(count))
    if key not in pool:
        pixels = images_to_tensor([image], size)[0]
        pool[key] = to_image(make(pixels, torch.Generator().manual_seed(view_seed(seed, *key))))
    return pool[key]


def rng_state(rng: random.Random) -> list[Any]:
    """`rng`'s state as JSON values (for a defense's training_state)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
