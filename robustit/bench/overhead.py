"""The overhead benchmark: tuning wall time of a defense over VanillaIT's,

    overhead = T_defense / T_vanilla,

both tuned in this one process, one after the other, on the same poisoned data with the same
seed and number of steps, each from a freshly loaded base model and an empty feature cache
(so each pays its own encoder passes). Training only: no evaluation. Also reported: passes
through the tuned model per step beyond the one of VanillaIT, and frozen-encoder batches.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Sequence

from robustit.atomic import write_atomic
from robustit.config import packaged_config
from robustit.experiment import Experiment
from robustit.report import markdown_table


def run_overhead_benchmark(defense: str, attack: str, steps: int, overrides: Sequence[str], out: Path) -> Path:
    """Tune VanillaIT, then `defense`, for `steps` steps each; write their table to `out`.
    No run directory is written: only the table."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rows: list[dict[str, str]] = []
    vanilla_seconds: float | None = None
    for label in ("vanilla", defense):
        config = packaged_config([f"attacks/{attack}", f"defenses/{label}"], ["name=bench-overhead", *overrides, f"train.max_steps={steps}"])
        experiment = Experiment(config)
        result = experiment.tune()
        vanilla_seconds = vanilla_seconds or result.seconds
        rows.append({
            "defense": label,
            "steps": str(result.steps),
            "tuning s": f"{result.seconds:.1f}",
            "s/step": f"{result.seconds_per_step:.2f}",
            "overhead": f"{result.seconds / vanilla_seconds:.3f}",
            "extra passes/step": f"{result.extra_forward_passes / result.steps:.2f}",
            "encoder batches": str(experiment.features.encoder_calls),
            "peak MB": f"{result.peak_memory_mb:.0f}",
        })
        write_atomic(out, markdown_table(rows) + "\n")
        del experiment
        gc.collect()
    return out
