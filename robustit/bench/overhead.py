"""The overhead benchmark: tuning wall time of a defense over VanillaIT's,

    overhead = T_defense / T_vanilla,

both tuned in this one process, one after the other, on the same poisoned data with the same
seed and number of steps, each from a freshly loaded base model and an empty feature cache
(so each pays its own encoder passes). Training only: no evaluation. Also reported: passes
through the tuned model per step beyond the one of VanillaIT, and frozen-encoder batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from robustit.attacks.base import build_attack
from robustit.attacks.dataset import PoisonedDataset
from robustit.config import packaged_config
from robustit.bench.common import write_table
from robustit.defenses.base import build_defense
from robustit.pipeline import load_model, split_samples
from robustit.train.features import FeatureCache
from robustit.train.loop import train


def run_overhead_benchmark(defense: str, attack: str, steps: int, overrides: Sequence[str], out: Path) -> Path:
    """Tune VanillaIT, then `defense`, for `steps` steps each; write their table to `out`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    configs = {
        label: packaged_config([f"attacks/{attack}", f"defenses/{label}"], ["name=bench-overhead", *overrides, f"train.max_steps={steps}"])
        for label in ("vanilla", defense)
    }
    data = configs["vanilla"].data
    samples = split_samples(data, data.train_split, data.train_size)
    rows: list[dict[str, str]] = []
    vanilla_seconds: float | None = None
    for label, config in configs.items():
        torch.manual_seed(config.train.seed)
        model = load_model(config)
        poisoner = build_attack(config.attack) if config.attack is not None else None
        dataset: Any = samples
        if poisoner is not None:
            poisoner.prepare(model, samples)
            dataset = PoisonedDataset(samples, poisoner)
        plugin = build_defense(config.defense) if config.defense is not None else None
        features = FeatureCache(model)
        print(f"[robustit] overhead benchmark: {label}, {steps} steps", flush=True)
        result = train(model, dataset, config.train, config.run_dir(), features, True, plugin)
        vanilla_seconds = vanilla_seconds or result.seconds
        rows.append({
            "defense": label,
            "steps": str(result.steps),
            "tuning s": f"{result.seconds:.1f}",
            "s/step": f"{result.seconds_per_step:.2f}",
            "overhead": f"{result.seconds / vanilla_seconds:.3f}",
            "extra passes/step": f"{result.extra_forward_passes / result.steps:.2f}",
            "encoder batches": str(features.encoder_calls),
            "peak MB": f"{result.peak_memory_mb:.0f}",
        })
        write_table(rows, out)
        del model, features, plugin
    return out
