"""One experiment, assembled once from its config (DESIGN.md section 2, OpenBackdoor's
poisoner -> trainer -> victim -> defender -> evaluator):

    data -> model (base adapter in place) -> attack -> poisoned set -> defense -> feature cache
         -> tune -> evaluate -> run directory (+ a record in the result store)

A data-side defense's flags, written by tuning, are scored against the attack's manifest into
metrics.json's "detection" (`robustit.eval.detection`).

A run whose tuning is VanillaIT's (no defense, or a test-time-only one) shares it with the
other runs of the same setting (`robustit.train.shared`): it is tuned once and read back.

Every part is built on first use and kept, so a caller takes only what it needs: the
overhead benchmark calls `tune()` alone, re-evaluation `Experiment.from_run(...).evaluate()`,
the activation figure `.model` and `.test_samples`. Each stage's wall time is logged and kept
in `timings`. The defense trains with the model and applies its test-time part to the tuned
evaluation; the base evaluation is undefended.

Under a data-parallel launch (`accelerate launch`, `robustit.train.parallel`) the main process
runs `run` as one process does, its tuning joined by the other processes, which load the data
and tune but write and evaluate nothing.
"""
from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from robustit.attacks.base import Attack, build_attack
from robustit.attacks.dataset import PoisonedDataset
from robustit.attacks.fitted import fit_trigger
from robustit.config import ExperimentConfig, changed_keys
from robustit.data.errors import LoadReport
from robustit.data.fingerprint import samples_fingerprint
from robustit.data.sample import Sample
from robustit.data.sources import load_split
from robustit.defenses.base import Defense, build_defense
from robustit.eval.asr import eligibility
from robustit.eval.detection import detection_of
from robustit.eval.drift import DRIFT_IMAGES, VisualReadout, adapter_drift, visual_readout
from robustit.eval.evaluate import choose_demonstration, evaluate
from robustit.models.base import VisionLanguageModel
from robustit.models.feature_store import FeatureStore
from robustit.models.features import FeatureCache
from robustit.models.hashes import file_hash, weights_hash
from robustit.models.registry import build_model
from robustit.rundir import RunDirectory
from robustit.train.base_adapter import ensure_base_adapter
from robustit.train.loop import TrainResult, train
from robustit.train.parallel import is_main_process, launched_processes, refuse
from robustit.train.shared import shares_tuning, tune_shared, tuning_key

if TYPE_CHECKING:
    from robustit.store import ResultStore

log = logging.getLogger("robustit")
TEST_TIME_SETTINGS = ("eval", "attack.text_trigger", "attack.target", "attack.params", "defense.params", "data.test_size")


def subsample(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of `size` samples in their original order (all if None)."""
    if size is None or size >= len(samples):
        return samples
    keep = sorted(random.Random(f"subsample:{seed}").sample(range(len(samples)), size))
    return [samples[i] for i in keep]


class Experiment:
    """The parts of one experiment, built from `config` on first use.

    `tuned_from` (set by `from_run`) makes `model` the tuned model of that finished run and
    loads its fitted trigger and defense state, for evaluation without tuning again.
    """

    def __init__(self, config: ExperimentConfig, progress: bool = True, tuned_from: RunDirectory | None = None) -> None:
        self.config = config
        self.progress = progress
        self.tuned_from = tuned_from
        self.timings: dict[str, float] = {}
        self.base_dir: Path | None = None
        self.load_reports: dict[str, LoadReport] = {}
        self._poisoned: list[Sample] | PoisonedDataset | None = None

    @classmethod
    def from_run(cls, run_dir: RunDirectory, overrides: Sequence[str] = (), progress: bool = True) -> Experiment:
        """The experiment of a finished run, its tuned model in place, with test-time
        `overrides` (only `TEST_TIME_SETTINGS` may change) applied to its saved config."""
        config = run_dir.load_config(overrides)
        changed = changed_keys(run_dir.load_config().to_dict(), config.to_dict())
        outside = [key for key in changed if not any(key == p or key.startswith(f"{p}.") for p in TEST_TIME_SETTINGS)]
        if outside:
            raise ValueError(f"re-evaluation changes only test-time settings {list(TEST_TIME_SETTINGS)}; got {outside}")
        return cls(config, progress, tuned_from=run_dir)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage into `timings` and log it."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            log.info("%s: %.1f s", name, self.timings[name])

    def _split(self, role: str, split: str, size: int | None) -> list[Sample]:
        """The samples of `split` (bad records skipped into `load_reports[role]` under
        data.skip_bad), subsampled to `size`; a ValueError if none are left."""
        data = self.config.data
        report = self.load_reports.setdefault(role, LoadReport())
        samples = subsample(load_split(data.source, split, data.options, data.skip_bad, report), size, data.seed)
        if not samples:
            skipped = f" ({report.skipped_count} bad records skipped)" if report.skipped else ""
            raise ValueError(f"data.{role}_split {split!r} of data source {data.source!r} holds no samples{skipped}")
        return samples

    @cached_property
    def train_samples(self) -> list[Sample]:
        with self.stage("data"):
            return self._split("train", self.config.data.train_split, self.config.data.train_size)

    @cached_property
    def test_samples(self) -> list[Sample]:
        """The test split capped at `data.test_size` samples (the one cap on the test set)."""
        with self.stage("data"):
            return self._split("test", self.config.data.test_split, self.config.data.test_size)

    def check(self) -> None:
        """Everything that can fail before the model is built, at once: both splits load
        (each bad record an error naming its file, record and field, or skipped under
        data.skip_bad), neither is empty, every image decodes (taking `data_fingerprints`),
        an attack with a poison rate above 0 poisons some but not all of the training
        samples (a rate of 0 is the clean control: tuned on clean data, evaluated with the
        attack's triggers), and some test sample is eligible for its ASR (`eligibility`)."""
        n_train, n_test = len(self.train_samples), len(self.test_samples)
        log.info("data: %d training and %d test samples", n_train, n_test)
        self.data_fingerprints
        if self.attack is not None:
            eligibility([sample.references for sample in self.test_samples], self.attack.target)
        rate = self.config.attack.poison_rate if self.config.attack is not None else 0
        if rate > 0:
            poisoned = len(self.attack.select_indices(n_train))
            if poisoned in (0, n_train):
                raise ValueError(f"attack.poison_rate {rate} of {n_train} training samples poisons {poisoned} of them "
                                 f"(round({rate} x {n_train})): choose a rate or a training set that poisons some "
                                 f"but not all")

    @cached_property
    def model(self) -> VisionLanguageModel:
        """The starting model: the family's released weights with the base adapter of
        `model.base` in place ("pretrain": the cached clean pretraining stage, run on first
        use, before `model.lora` adds its LoRA layers), or the tuned model of `tuned_from`."""
        base, data = self.config.model.base, self.config.data
        with self.stage("base model"):
            model = build_model(self.config.model.family, **self.config.model.spec)
            if self.tuned_from is not None:
                base = None
            elif base == "pretrain":
                base = ensure_base_adapter(model, *data.pretraining(), self.config.pretrain, self.progress)
            if self.config.model.lora is not None:
                model.add_lora(self.config.model.lora)
            if base is not None:
                self.base_dir = Path(base)
                model.load_trainable(self.base_dir, strict=False)
        if self.tuned_from is not None:
            self.tuned_from.load_checkpoint(model, self.defense)
        return model

    @cached_property
    def attack(self) -> Attack | None:
        if self.config.attack is None:
            return None
        attack = build_attack(self.config.attack)
        if self.tuned_from is not None:
            attack.load_trigger_files(self.tuned_from.trigger_dir)
        return attack

    @cached_property
    def defense(self) -> Defense | None:
        if self.config.defense is None:
            return None
        defense = build_defense(self.config.defense)
        defense.show_progress(self.progress)
        return defense

    @cached_property
    def demonstration(self) -> Sample | None:
        """The in-context demonstration of one-shot evaluation (`eval.shots=1`): a clean
        training sample (`choose_demonstration` by `data.seed`); None for zero-shot. Asking for
        it checks that the model takes several images per prompt."""
        if self.config.eval.shots == 0:
            return None
        self.model.check_multi_image()
        return choose_demonstration(self.train_samples, self.config.data.seed)

    @cached_property
    def features(self) -> FeatureCache:
        """The run's frozen-feature cache, over the shared feature store where
        `model.feature_cache_mb` is above 0."""
        limit = self.config.model.feature_cache_mb
        return FeatureCache(self.model, store=FeatureStore.of(self.model, limit) if limit else None)

    def poison(self) -> list[Sample] | PoisonedDataset:
        """The training set as tuning sees it: poisoned by the attack (its trigger fitted on
        the starting model first where it needs that, or read back from the trigger cache:
        `robustit.attacks.fitted`), or clean without one."""
        if self._poisoned is None:
            train_samples, model = self.train_samples, self.model
            with self.stage("poison"):
                if self.attack is None:
                    self._poisoned = train_samples
                else:
                    fit_trigger(self.attack, model, train_samples)
                    self._poisoned = PoisonedDataset(train_samples, self.attack)
        return self._poisoned

    def tune(self, run_dir: RunDirectory | None = None, resume: bool = False, share: bool = False) -> TrainResult:
        """Tune the model in place on the poisoned set under the defense; checkpoints and
        the tuning's record go to `run_dir` when given (benchmarks that time tuning pass
        none), and `resume` continues the tuning an earlier attempt left there. With `share`,
        a tuning that is VanillaIT's (no defense or a test-time-only one) is done once per
        setting and read back after (`robustit.train.shared`)."""
        dataset = self.poison()
        torch.manual_seed(self.config.train.seed)
        with self.stage("tuning"):
            if share and shares_tuning(self.defense):
                return tune_shared(self.model, dataset, self.config.train, tuning_key(self.config, self.inputs),
                                   run_dir, self.features, self.progress, self.defense, resume)
            return train(self.model, dataset, self.config.train, run_dir, self.features, self.progress, self.defense,
                         resume)

    def evaluate(self, defended: bool = True) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
        """(metrics, predictions by condition) of the model as it is now on the test set,
        under the attack's triggers; `defended=False` leaves the defense's test-time part out
        and measures clean quality only (the base model before tuning)."""
        test, model = self.test_samples, self.model
        with self.stage("evaluation" if defended else "base evaluation"):
            return evaluate(model, test, self.attack if defended else None, self.config.eval, self.features,
                            self.progress, self.defense if defended else None, self.demonstration)

    def drift_features(self) -> torch.Tensor:
        """The frozen features of the first `DRIFT_IMAGES` test images (`robustit.eval.drift`)."""
        return self.features.features([sample.image for sample in self.test_samples[:DRIFT_IMAGES]])

    def adapter_readout(self, features: torch.Tensor | None = None) -> VisualReadout:
        """The model's adapter output, as it is now, on `features` (default `drift_features`;
        the encoder is frozen, so one experiment's features serve another's on the same data)."""
        return visual_readout(self.model, self.drift_features() if features is None else features)

    @cached_property
    def data_fingerprints(self) -> dict[str, str]:
        """`samples_fingerprint` of the training and of the test samples: it decodes every
        image, so an image that does not decode is an error naming its record here."""
        train, test = self.train_samples, self.test_samples
        with self.stage("data"):
            return {"train_data": samples_fingerprint(train), "test_data": samples_fingerprint(test)}

    @cached_property
    def inputs(self) -> dict[str, str | None]:
        """Hashes that identify what the run starts from: the starting model's weights, the
        base adapter file, the training and test data; taken when first asked, which `run`
        and a sharing `tune` do before tuning."""
        model = self.model
        return {
            "model_weights": weights_hash(model),
            "base_adapter": file_hash(self.base_dir / "trainable.safetensors") if self.base_dir is not None else None,
            **self.data_fingerprints,
        }

    def run(self, store: ResultStore | None = None, resume: bool = False, replace: bool = False) -> RunDirectory:
        """The whole experiment into its run directory (`config.run_dir()`), recorded in
        `store` when given; returns the run directory. The directory is claimed first
        (`RunDirectory.claimed`: not in use, not another config's unless `replace`, which
        clears that run instead). `resume` continues what
        a killed attempt of the same config left there: a finished run is only recorded, a
        tuning goes on from its last checkpoint (inputs that changed since are an error).
        Under a data-parallel launch only the main process does all this; the others tune
        beside it (`_tune_beside_main`)."""
        config = self.config
        run_dir = RunDirectory(config.run_dir())
        if launched_processes() > 1:
            refuse(self.defense, resume, launched_processes())
        if not is_main_process():
            self._tune_beside_main(run_dir)
            return run_dir
        with run_dir.claimed(config, resume, replace):
            if resume and run_dir.is_complete():
                log.info("%s is complete; nothing to resume", run_dir)
                self._record(store, run_dir.load_metrics(), run_dir.load_inputs())
                return run_dir
            torch.manual_seed(config.train.seed)
            self.check()
            if self.demonstration is not None:
                log.info("one-shot evaluation: every test input follows training sample %s", self.demonstration.id)
            run_dir.save_config(config)
            inputs = self.inputs
            earlier = run_dir.load_inputs() if resume else {}
            if earlier and earlier != inputs:
                raise ValueError(f"{run_dir} was tuned from other inputs than this run has "
                                 f"({changed_keys(earlier, inputs)} differ); run it again without --resume")
            run_dir.save_inputs(inputs)
            poisoned = self.poison()
            if isinstance(poisoned, PoisonedDataset):
                self.attack.save_trigger_files(run_dir.trigger_dir)
                run_dir.save_manifest(poisoned.manifest())
            metrics: dict[str, Any] = {
                "name": config.name,
                "defense": self.defense.describe() if self.defense is not None else None,
                "n_train": len(poisoned),
                "n_test": len(self.test_samples),
                "data": {role: report.as_dict() for role, report in self.load_reports.items()},
            }
            records: dict[str, list[dict[str, Any]]] = {}
            if config.evaluate_base:
                metrics["base"], base_records = self.evaluate(defended=False)
                records["base_clean"] = base_records["clean"]
            start = self.adapter_readout()
            result = self.tune(run_dir, resume, share=True)
            metrics["train"] = result.summary()
            metrics["adapter_drift"] = adapter_drift(start, self.adapter_readout())
            detection = detection_of(run_dir)
            if detection is not None:
                metrics["detection"] = detection
            tuned_metrics, tuned_records = self.evaluate()
            metrics.update(tuned_metrics)
            records.update(tuned_records)
            metrics["timings"] = dict(self.timings)
            run_dir.save_predictions(records)
            run_dir.save_metrics(metrics)
            run_dir.write_report()
            self._record(store, metrics, inputs)
        return run_dir

    def _tune_beside_main(self, run_dir: RunDirectory) -> None:
        """A data-parallel process other than the main one: the same checks and tuning as the
        main process, which alone claims, writes and evaluates `run_dir`."""
        torch.manual_seed(self.config.train.seed)
        self.check()
        self.tune(run_dir, share=True)

    def _record(self, store: ResultStore | None, metrics: dict[str, Any], inputs: dict[str, str | None]) -> None:
        if store is not None:
            from robustit.store import make_record

            store.put(make_record(self.config, metrics, inputs))

    def reevaluate(self, out: RunDirectory) -> RunDirectory:
        """Evaluate the tuned model of `tuned_from` again (test-time settings changed) into `out`."""
        source = self.tuned_from
        if source is None:
            raise ValueError("reevaluate needs an experiment made by Experiment.from_run")
        if out.path.resolve() == source.path.resolve():
            raise ValueError(f"re-evaluation would overwrite the run it evaluates ({source.path}); name another folder")
        metrics, records = self.evaluate()
        out.clear()
        manifest = source.load_manifest()
        if manifest is not None:
            out.save_manifest(manifest)
        out.save_inputs(source.load_inputs())
        changed = changed_keys(source.load_config().to_dict(), self.config.to_dict())
        out.save_config(self.config)
        out.save_predictions(records)
        out.save_metrics({"name": self.config.name, "reevaluated": str(source.path), "changed": changed,
                          "defense": self.defense.describe() if self.defense is not None else None,
                          "n_test": len(self.test_samples), **metrics})
        out.write_report()
        return out
