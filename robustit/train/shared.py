"""VanillaIT's tuning, done once per setting and shared by the runs that would repeat it.

A test-time-only defense (`Defense.test_time_only`: prompt filtering, STRIP, Fine-Pruning)
changes nothing its tuning learns, so tuning under it is VanillaIT's tuning of the same
setting followed by the defense's `prepare` and `finalize` on the tuned model. `tune_shared`
tunes that way: the tuned weights come from the cache entry

    cache_dir("tuned", key),  key = sha256(the config's outcome without defense, eval and test
                                           split; inputs.json without the test data; torch
                                           threads; torch version; the process count where
                                           tuning runs data-parallel)[:16]

(checkpoint/ and train.json, the `TrainResult` of the tuning), written by the first run of
the setting, VanillaIT's or a test-time-only defense's, which tunes with no defense. The
defense then runs `prepare` on the stripped training set and `finalize` with its adapter hook
registered, as `train` does after its last step, with the generators seeded by train.seed.
The run's `TrainResult` is the shared tuning's, with the seconds and the adapter passes of
`prepare` and `finalize` added and `shared_from` naming the entry. The thread count is part
of the key because float reductions, and so the tuned bytes, may depend on it; so is the
process count of a data-parallel tuning (`robustit.train.parallel`), whose main process alone
writes the entry.

Only `Experiment.run` shares; a benchmark that times tuning (`bench overhead`) calls `train`.
Entries are the size of the trainable weights (about 120 MB for `mini`); removing the folder
removes the sharing, not a result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from typing import Sequence

import torch

from robustit.atomic import write_atomic
from robustit.checkpoint import checkpoint_problem, read_checkpoint, write_checkpoint
from robustit.config import ExperimentConfig, without_keys
from robustit.data.sample import Sample
from robustit.defenses.base import Defense, stripped_dataset
from robustit.models.base import VisionLanguageModel
from robustit.models.cache import cache_dir
from robustit.models.features import FeatureCache
from robustit.rundir import RunDirectory
from robustit.train.config import TrainConfig
from robustit.train.loop import TrainResult, save_tuning, seed_everything, train
from robustit.train.parallel import is_main_process, launched_processes

log = logging.getLogger("robustit")
NOT_TUNING = ("defense", "eval", "data.test_split", "data.test_size")
RESULT_FILE = "train.json"


def shares_tuning(defense: Defense | None) -> bool:
    """Whether tuning under `defense` is VanillaIT's tuning (no defense, or a test-time-only one)."""
    return defense is None or defense.test_time_only


def tuning_key(config: ExperimentConfig, inputs: dict[str, str | None]) -> str:
    """The cache key of VanillaIT's tuning in the setting of `config` from `inputs`."""
    key = {"config": without_keys(config.outcome(), NOT_TUNING),
           "inputs": {name: value for name, value in inputs.items() if name != "test_data"},
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    if launched_processes() > 1:
        key["processes"] = launched_processes()
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SharedTuning:
    """The cache entry of one setting's VanillaIT tuning: checkpoint/ and train.json."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.path = cache_dir("tuned", key)

    def holds(self) -> bool:
        return (self.path / RESULT_FILE).is_file() and checkpoint_problem(self.path / "checkpoint") is None

    def load(self, model: VisionLanguageModel) -> TrainResult:
        """The tuned weights into `model`; the tuning's record."""
        read_checkpoint(self.path / "checkpoint", model, None)
        return TrainResult(**json.loads((self.path / RESULT_FILE).read_text()))

    def save(self, model: VisionLanguageModel, result: TrainResult) -> None:
        write_checkpoint(self.path / "checkpoint", model, None, None, None)
        write_atomic(self.path / RESULT_FILE, json.dumps(result.as_dict()) + "\n")


def replay_defense(model: VisionLanguageModel, dataset: Sequence[Sample], seed: int, defense: Defense,
                   result: TrainResult) -> TrainResult:
    """What `train` does with a test-time-only `defense` beside VanillaIT's tuning (`result`):
    `prepare` on the stripped training set, `finalize` with the adapter hook registered; the
    record with its seconds and passes added."""
    seed_everything(seed)
    start, passes = time.perf_counter(), defense.extra_forward_passes
    defense.prepare(model, stripped_dataset(dataset))
    remove_hook = model.add_adapter_hook(defense.adapter_hook)
    try:
        defense.finalize(model)
    finally:
        remove_hook()
    model.eval()
    added, seconds = defense.extra_forward_passes - passes, result.seconds + time.perf_counter() - start
    return replace(result, seconds=seconds, seconds_per_step=seconds / result.steps,
                   samples_per_second=result.samples_per_second * result.seconds / seconds,
                   forward_passes=result.forward_passes + added, extra_forward_passes=result.extra_forward_passes + added)


def tune_shared(
    model: VisionLanguageModel, dataset: Sequence[Sample], config: TrainConfig, key: str, run_dir: RunDirectory | None = None,
    features: FeatureCache | None = None, progress: bool = True, defense: Defense | None = None, resume: bool = False,
) -> TrainResult:
    """`train` for a run whose tuning is VanillaIT's (`shares_tuning(defense)`): the shared
    tuning of `key` read back, or tuned with no defense (resumably in `run_dir`, which `train`
    writes) and kept, then the defense's `prepare` and `finalize`; the result written to
    `run_dir` as `train` does where `train` did not write it already (by the main process
    alone under a data-parallel launch)."""
    if not shares_tuning(defense):
        raise ValueError(f"defense {defense.name!r} changes what tuning learns; it cannot share VanillaIT's tuning")
    entry = SharedTuning(key)
    read_back = entry.holds()
    if read_back:
        log.info("tuning: VanillaIT's tuning of this setting is shared, read back from %s", entry.path)
        result = replace(entry.load(model), shared_from=key)
        model.eval()
    else:
        result = train(model, dataset, config, run_dir, features, progress, None, resume)
        if is_main_process():
            entry.save(model, result)
    if defense is not None:
        result = replay_defense(model, dataset, config.seed, defense, result)
    if run_dir is not None and is_main_process() and (read_back or defense is not None):
        save_tuning(run_dir, model, defense, result)
    return result
