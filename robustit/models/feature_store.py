"""Frozen-encoder features on disk, shared between runs (opt-in: `model.feature_cache_mb`).

A run's `FeatureCache` keeps f_v(x) in memory for that run; with a `FeatureStore` behind it,
an image the run has not encoded yet is looked up on disk first, and what the run encodes is
written there for the runs after it (the other runs of a grid on the same data). A file is

    cache_dir("features", encoder)/<key[:2]>/<key>.safetensors,   key = image_key(x)
    encoder = sha256(family, image size, the vision tower's weights, torch version, threads)[:16]

so a view of an image (a transformed copy) has its own key, like any image, and another
encoder or preprocessing never reads these features. The folder is bounded: after a batch of
writes, while its files exceed `limit_mb`, the least recently used (modification time, which a
read refreshes) are removed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch

from robustit.models.base import VisionLanguageModel
from robustit.models.cache import cache_dir
from robustit.models.hashes import weights_hash
from robustit.tensors import load_tensors, save_tensors

log = logging.getLogger("robustit")


def encoder_key(model: VisionLanguageModel) -> str:
    """What decides f_v(x) besides the image: the family (its pixel preprocessing), the image
    size, the vision tower's weights, torch's version and thread count."""
    identity = f"{model.family}:{model.image_size}:{weights_hash(model.vision)}:{torch.__version__}:{torch.get_num_threads()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class FeatureStore:
    """Features by image key in `folder`, at most `limit_mb` megabytes of files."""

    def __init__(self, folder: Path, limit_mb: float) -> None:
        if limit_mb <= 0:
            raise ValueError(f"a feature store needs a size limit above 0 MB, got {limit_mb}")
        self.folder = folder
        self.limit_bytes = int(limit_mb * 2**20)
        self.reads = self.writes = 0

    @classmethod
    def of(cls, model: VisionLanguageModel, limit_mb: float) -> FeatureStore:
        """The store of `model`'s encoder under the cache."""
        return cls(cache_dir("features", encoder_key(model)), limit_mb)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored features of image `key` (None if absent or unreadable)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            tensor = load_tensors(path)[0]["features"]
        except (OSError, ValueError, KeyError) as error:
            log.warning("feature store: %s is unreadable (%s); encoding the image again", path, error)
            return None
        self._touch(path)
        self.reads += 1
        return tensor

    def put(self, items: dict[str, torch.Tensor]) -> None:
        """Store each key's features, then trim the folder to the limit."""
        for key, tensor in items.items():
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(path, {"features": tensor})
            self._touch(path)
            self.writes += 1
        self.trim()

    @staticmethod
    def _touch(path: Path) -> None:
        """Mark `path` used now, to the nanosecond (a file system's own clock may be coarser)."""
        now = time.time_ns()
        os.utime(path, ns=(now, now))

    def trim(self) -> None:
        """Remove the least recently used files while the folder exceeds the limit."""
        files = [(entry.stat(), entry) for entry in self.folder.glob("*/*.safetensors")]
        total = sum(stat.st_size for stat, _ in files)
        for stat, path in sorted(files, key=lambda item: item[0].st_mtime_ns):
            if total <= self.limit_bytes:
                break
            path.unlink(missing_ok=True)
            total -= stat.st_size
