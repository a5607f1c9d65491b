"""Fitted triggers, fitted once: `fit_trigger` keeps each fit under the cache.

An attack whose trigger is fitted on the starting model (VLTrojan) says what the fit reads
besides that model and the clean training samples (`Attack.fit_identity`). The fit goes to
`cache_dir("triggers", key)` with

    key = sha256(fit_identity, weights_hash(surrogate), samples_fingerprint(samples),
                 torch threads, torch version)[:16]

so runs that differ only in what the fit does not read (poison rate, attack seed, defense,
tuning) fit once and read the same trigger back; the thread count is part of the key because
float reductions, and so the fitted bytes, may depend on it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Sequence

import torch

from robustit.attacks.base import Attack
from robustit.data.fingerprint import samples_fingerprint
from robustit.data.sample import Sample
from robustit.models.base import VisionLanguageModel
from robustit.models.cache import cache_dir
from robustit.models.hashes import weights_hash

log = logging.getLogger("robustit")


def fit_key(attack: Attack, surrogate: VisionLanguageModel, samples: Sequence[Sample]) -> str | None:
    """The cache key of `attack`'s fit on `surrogate` and `samples`; None when nothing is fitted."""
    identity = attack.fit_identity()
    if identity is None:
        return None
    key = {"fit": identity, "surrogate": weights_hash(surrogate), "samples": samples_fingerprint(samples),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit_trigger(attack: Attack, surrogate: VisionLanguageModel, samples: Sequence[Sample]) -> None:
    """`attack.prepare(surrogate, samples)`, or the trigger files of the same fit read back from
    the cache."""
    key = fit_key(attack, surrogate, samples)
    if key is None:
        attack.prepare(surrogate, samples)
        return
    folder = cache_dir("triggers", key)
    try:
        attack.load_trigger_files(folder)
        log.info("trigger: the same fit was made before, read back from %s", folder)
    except FileNotFoundError:
        attack.prepare(surrogate, samples)
        attack.save_trigger_files(folder)
