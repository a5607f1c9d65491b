"""One experiment end to end (DESIGN.md section 2): data -> attack -> base model -> tuning ->
evaluation -> run directory. Each stage's wall time is recorded.

The run directory holds config.yaml, manifest.json (the attack's record), audit.json,
metrics.json (the defense, base and tuned quality, ASR variants, training cost and mean
defense loss terms, stage timings), losses.json (LM loss per step), loss_terms.json (each
defense term per step, when there are any), predictions/<condition>.jsonl (base_clean:
the base model before tuning) and report.md.
The defense trains with the model and applies its test-time part to the tuned evaluation;
the base evaluation is undefended.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from robustit.attacks.base import build_attack
from robustit.attacks.dataset import PoisonedDataset
from robustit.config import DataConfig, ExperimentConfig, load_config
from robustit.data.sample import Sample
from robustit.data.sources import load_split
from robustit.defenses.base import build_defense
from robustit.eval.evaluate import evaluate
from robustit.models import build_model
from robustit.models.base import VisionLanguageModel
from robustit.report import write_report
from robustit.train.base_adapter import ensure_base_adapter
from robustit.train.features import FeatureCache
from robustit.train.loop import train


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
            print(f"[robustit] {stage}: {self.seconds[stage]:.1f} s", flush=True)


def subsample(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of `size` samples in their original order (all if None)."""
    if size is None or size >= len(samples):
        return samples
    keep = sorted(random.Random(f"subsample:{seed}").sample(range(len(samples)), size))
    return [samples[i] for i in keep]


def split_samples(data: DataConfig, split: str, size: int | None) -> list[Sample]:
    """A seeded subset of `size` samples (all if None) of `split` of the config's data source."""
    return subsample(load_split(data.source, split, data.options), size, data.seed)


def write_predictions(run_dir: Path, records: dict[str, list[dict[str, Any]]]) -> None:
    """predictions/<condition>.jsonl, one record per line."""
    predictions = run_dir / "predictions"
    predictions.mkdir(exist_ok=True)
    for condition, rows in records.items():
        with (predictions / f"{condition}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def load_model(config: ExperimentConfig, progress: bool = True) -> VisionLanguageModel:
    """The model with its base adapter in place (pretrained and cached when base = "pretrain")."""
    model = build_model(config.model.family, **config.model.spec)
    base = config.model.base
    if base == "pretrain":
        data = config.data
        base = ensure_base_adapter(model, data.source, data.options, data.pretrain_split, config.pretrain, progress)
    if base is not None:
        model.load_trainable(base, strict=False)
    return model


def load_tuned_model(run_dir: Path, config: ExperimentConfig | None = None) -> VisionLanguageModel:
    """The model a finished run tuned: its config's model (base adapter in place) with the
    run's final trainable weights."""
    config = config if config is not None else load_config(run_dir / "config.yaml")
    model = load_model(config, progress=False)
    model.load_trainable(run_dir / "checkpoint", strict=False)
    return model


def run_experiment(config: ExperimentConfig, progress: bool = True) -> Path:
    """Run `config`; returns its run directory."""
    torch.manual_seed(config.train.seed)
    defense = build_defense(config.defense) if config.defense is not None else None
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    timer = StageTimer()
    data = config.data
    with timer("data"):
        train_samples = split_samples(data, data.train_split, data.train_size)
        test_samples = split_samples(data, data.test_split, data.test_size)
    with timer("base model"):
        model = load_model(config, progress)
    attack = build_attack(config.attack) if config.attack is not None else None
    with timer("poison"):
        if attack is not None:
            attack.prepare(model, train_samples)
            attack.save_trigger_files(run_dir)
            dataset = PoisonedDataset(train_samples, attack)
            dataset.write_manifest(run_dir / "manifest.json")
        else:
            dataset = train_samples
    features = FeatureCache(model)
    metrics: dict[str, Any] = {
        "name": config.name,
        "defense": defense.describe() if defense is not None else None,
        "n_train": len(dataset),
        "n_test": len(test_samples),
    }
    if config.evaluate_base:
        with timer("base evaluation"):
            base_metrics, base_records = evaluate(model, test_samples, None, config.eval, features, progress)
        metrics["base"] = base_metrics
    with timer("tuning"):
        result = train(model, dataset, config.train, run_dir, features, progress, defense)
    metrics["train"] = {k: v for k, v in result.as_dict().items() if k not in ("audit", "losses", "loss_terms")}
    metrics["train"]["final_loss"] = result.losses[-1]
    metrics["train"]["loss_terms"] = result.mean_loss_terms()
    with timer("evaluation"):
        tuned_metrics, records = evaluate(model, test_samples, attack, config.eval, features, progress, defense)
    metrics.update(tuned_metrics)
    metrics["timings"] = timer.seconds
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "losses.json").write_text(json.dumps(result.losses) + "\n")
    if result.loss_terms:
        (run_dir / "loss_terms.json").write_text(json.dumps(result.loss_terms) + "\n")
    if config.evaluate_base:
        records = {"base_clean": base_records["clean"], **records}
    write_predictions(run_dir, records)
    write_report(run_dir)
    return run_dir
