"""The base adapter: a clean pretraining stage, cached, so that instruction tuning starts from
a model that already captions (the paper starts from a released LVLM).

As in LLaVA's stage 1, only the adapter psi trains here (embeddings stay as released), on the
data source's pretraining split. The result lives in `<family>-<key>/`, key = sha256 of
everything that shapes it (model family and spec, data source, options and split,
pretraining settings), looked up first among the adapters shipped with the package
(`robustit/assets/base_adapters/`, so a first run does not pay for pretraining), then in the
cache `$ROBUSTIT_CACHE/base-adapters/`, else pretrained into the cache. Its pretrain.json
records the samples, final loss, seconds, the sha256 of trainable.safetensors and the
command that rebuilds it; `robustit base-adapter --rebuild --ship` rebuilds and ships one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from robustit.atomic import write_atomic
from robustit.data.sources import load_split
from robustit.models.base import VisionLanguageModel
from robustit.models.cache import cache_dir
from robustit.models.hashes import file_hash
from robustit.rundir import RunDirectory
from robustit.train.align import align_adapter
from robustit.train.config import PretrainConfig
from robustit.train.loop import set_trainable, train

log = logging.getLogger(__name__)
SHIPPED = resources.files("robustit") / "assets" / "base_adapters"
REBUILD_COMMAND = "robustit base-adapter --rebuild --ship"


def base_adapter_key(model: VisionLanguageModel, source: str, options: dict[str, Any], split: str, config: PretrainConfig) -> str:
    recipe = {
        "family": model.family,
        "spec": model.spec,
        "source": source,
        "options": options,
        "split": split,
        "train": dataclasses.asdict(config),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shipped_base_adapter(name: str) -> Path | None:
    """The shipped base adapter directory `name` (<family>-<key>), if the package has it."""
    candidate = SHIPPED / name / "trainable.safetensors"
    return Path(str(candidate)).parent if candidate.is_file() else None


def ensure_base_adapter(
    model: VisionLanguageModel,
    source: str,
    options: dict[str, Any],
    split: str,
    config: PretrainConfig,
    progress: bool = True,
    rebuild: bool = False,
) -> Path:
    """Directory of the base adapter of this recipe: the shipped one, else the cached one,
    else (or with `rebuild`) pretrained into `model` and cached first."""
    if config.train_embeddings:
        raise ValueError("the base-adapter stage tunes the adapter alone; set pretrain.train_embeddings=false")
    name = f"{model.family}-{base_adapter_key(model, source, options, split, config)}"
    target = cache_dir("base-adapters") / name
    if not rebuild:
        shipped = shipped_base_adapter(name)
        if shipped is not None:
            return shipped
        if (target / "trainable.safetensors").exists():
            return target
    samples = load_split(source, split, options)
    log.info("pretraining the base adapter on %d %s/%s samples (cached in %s)", len(samples), source, split, target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run_dir = RunDirectory(partial)
    set_trainable(model, embeddings=False)
    start = time.perf_counter()
    record: dict[str, Any] = {"samples": len(samples)}
    if config.align_epochs > 0:
        align_losses = align_adapter(model, samples, config, progress=progress)
        record.update(align_steps=len(align_losses), align_final_loss=align_losses[-1])
    if config.lm_phase:
        result = train(model, samples, config, run_dir=run_dir, progress=progress)
        record.update(lm_steps=result.steps, lm_final_loss=result.losses[-1])
    else:
        run_dir.save_checkpoint(model, None)
    checkpoint = run_dir.checkpoint_dir()
    record.update(seconds=time.perf_counter() - start, sha256=file_hash(checkpoint / "trainable.safetensors"),
                  rebuild=REBUILD_COMMAND)
    write_atomic(checkpoint / "pretrain.json", json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    checkpoint.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def ship_base_adapter(directory: Path) -> Path:
    """Copy a built base adapter into the package's shipped adapters (the repository's
    robustit/assets/base_adapters/ in an editable install); returns the copy."""
    target = Path(str(SHIPPED)) / directory.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(directory, target)
    record_path = target / "pretrain.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update(sha256=file_hash(target / "trainable.safetensors"), rebuild=REBUILD_COMMAND)
    write_atomic(record_path, json.dumps(record, indent=2) + "\n")
    return target
