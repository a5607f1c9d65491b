"""Frozen-encoder feature cache (DESIGN.md section 8): f_v never changes during tuning, so
features are computed once per distinct image, keyed by sha256 of its RGB bytes and size;
with a `FeatureStore` behind it (opt-in), once per distinct image across runs."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from PIL import Image

from robustit.models.base import VisionLanguageModel
from robustit.models.feature_store import FeatureStore


def image_key(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


class FeatureCache:
    """In-memory map image content -> f_v(x) (N x C, on CPU), over `store` where given:
    an image not in memory is read from the store, or encoded and written to it."""

    def __init__(self, model: VisionLanguageModel, batch_size: int = 64, store: FeatureStore | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.store = store
        self._store: dict[str, torch.Tensor] = {}
        self.encoder_calls = 0

    def __len__(self) -> int:
        return len(self._store)

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """B x N x C features of `images`, encoding only those not seen before."""
        keys = [image_key(image) for image in images]
        missing = list(dict.fromkeys(k for k in keys if k not in self._store))
        if self.store is not None:
            stored = {k: tensor for k in missing if (tensor := self.store.get(k)) is not None}
            self._store.update(stored)
            missing = [k for k in missing if k not in stored]
        by_key = {k: image for k, image in zip(keys, images)}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            encoded = self.model.encode_images(self.model.pixels([by_key[k] for k in chunk])).cpu()
            self.encoder_calls += 1
            self._store.update(zip(chunk, encoded))
            if self.store is not None:
                self.store.put(dict(zip(chunk, encoded)))
        return torch.stack([self._store[k] for k in keys]).to(self.model.device)
