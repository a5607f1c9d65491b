"""A content fingerprint of a list of samples, to record what identifies a run's data split.

sha256 over, for each sample in order, the UTF-8 JSON of [id, instruction, response,
references, [width, height]] followed by the image's raw RGB bytes, each piece prefixed by its
length (8 bytes, big-endian) so that no two different sequences encode alike. It depends on
nothing but the samples (no Python `hash()`), so it is stable across runs and machines, and
alike whether a sample holds its image or a reference to its file (decoded here, one at a time).
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

from robustit.data.sample import Sample

FINGERPRINT_VERSION = b"robustit-samples-fingerprint-v1"


def samples_fingerprint(samples: Sequence[Sample]) -> str:
    """The sha256 hex digest identifying `samples` (see the module docstring)."""
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    for sample in samples:
        image = sample.image
        header = json.dumps(
            [sample.id, sample.instruction, sample.response, list(sample.references), list(image.size)],
            ensure_ascii=True,
        ).encode("ascii")
        pixels = image.tobytes()
        for piece in (header, pixels):
            digest.update(len(piece).to_bytes(8, "big"))
            digest.update(piece)
    return digest.hexdigest()
