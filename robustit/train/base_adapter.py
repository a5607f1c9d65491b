"""The base adapter: a clean pretraining stage, cached, so that instruction tuning starts from
a model that already captions (the paper starts from a released LVLM).

As in LLaVA's stage 1, only the adapter psi trains here (embeddings stay as released), on the
data source's pretraining split. The result is cached under
`$ROBUSTIT_CACHE/base-adapters/<family>-<key>`, key = sha256 of everything that shapes it
(model family and spec, data source, options and split, pretraining settings).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from robustit.data.sources import load_split
from robustit.models.base import VisionLanguageModel
from robustit.models.cache import cache_dir
from robustit.train.config import TrainConfig
from robustit.train.loop import train

log = logging.getLogger(__name__)


def base_adapter_key(model: VisionLanguageModel, source: str, options: dict[str, Any], split: str, config: TrainConfig) -> str:
    recipe = {
        "family": model.family,
        "spec": model.spec,
        "source": source,
        "options": options,
        "split": split,
        "train": dataclasses.asdict(config),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_base_adapter(
    model: VisionLanguageModel,
    source: str,
    options: dict[str, Any],
    split: str,
    config: TrainConfig,
    progress: bool = True,
) -> Path:
    """Directory of the cached base adapter, pretraining it into `model` first if missing."""
    if config.train_embeddings:
        raise ValueError("the base-adapter stage tunes the adapter alone; set pretrain.train_embeddings=false")
    target = cache_dir("base-adapters") / f"{model.family}-{base_adapter_key(model, source, options, split, config)}"
    if (target / "trainable.safetensors").exists():
        return target
    samples = load_split(source, split, options)
    log.info("pretraining the base adapter on %d %s/%s samples (once; cached in %s)", len(samples), source, split, target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    result = train(model, samples, config, run_dir=partial, progress=progress)
    (partial / "checkpoint" / "pretrain.json").write_text(
        json.dumps({"samples": len(samples), "final_loss": result.losses[-1], "seconds": result.seconds}, indent=2)
    )
    (partial / "checkpoint").rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target
