"""The defense benchmark (paper Table 2 and its ablations): each defense variant tuned on the
same poisoned data with the demo's model, data, tuning and seed, one run each, in one table.

A variant is `name[:key=value[:key=value ...]]`: a packaged defense config
(configs/defenses/<name>.yaml; "vanilla" is none) and parameter overrides, e.g.
"robustit:alpha=3:gamma=0.3". "overhead" is tuning seconds / VanillaIT's tuning seconds in
this table; runs reused from an earlier invocation were timed then, so compare ratios of runs
made in one invocation (`robustit bench overhead` times both in one process).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

from robustit.bench.common import attack_columns, run_or_reuse, write_table
from robustit.report import load_metrics
from robustit.config import ExperimentConfig, packaged_config

COMPONENTS = ("vanilla", "aar", "idr", "robustit")
PAPER_ABLATIONS = COMPONENTS + (
    "robustit:alpha=1", "robustit:alpha=3",
    "robustit:gamma=0.3", "robustit:gamma=0.8",
    "robustit:beta=0", "robustit:beta=0.1", "robustit:beta=0.3", "robustit:beta=0.5", "robustit:beta=0.7", "robustit:beta=1",
)
PRESETS = {"components": COMPONENTS, "paper": PAPER_ABLATIONS}


def variant_config(spec: str, attack: str, overrides: Sequence[str]) -> ExperimentConfig:
    """The config of variant `spec` against `attack`, named <name>/<slug of spec>, where
    <name> is bench-defenses unless the overrides set it (so each variant and each set of
    overrides runs in its own directory)."""
    name, *settings = spec.split(":")
    for setting in settings:
        if "=" not in setting:
            raise ValueError(f"defense variant {spec!r}: {setting!r} must look like key=value")
    if name == "vanilla" and settings:
        raise ValueError(f"defense variant {spec!r}: vanilla has no parameters")
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "-", spec).replace("=", "")
    config = packaged_config(
        [f"attacks/{attack}", f"defenses/{name}"],
        ["evaluate_base=false", "name=bench-defenses", "output_dir=runs/{name}/{attack}-p{poison_rate}-seed{seed}",
         *overrides, *(f"defense.params.{setting}" for setting in settings)],
    )
    return dataclasses.replace(config, name=f"{config.name}/{slug}")


def defense_row(spec: str, run_dir: Path, vanilla_seconds: float | None) -> dict[str, str]:
    metrics = load_metrics(run_dir)
    train = metrics["train"]
    return {
        "defense": spec,
        **attack_columns(run_dir, metrics),
        "tuning s": f"{train['seconds']:.0f}",
        "overhead": f"{train['seconds'] / vanilla_seconds:.2f}" if vanilla_seconds else "-",
        "extra passes/step": f"{train['extra_forward_passes'] / train['steps']:.2f}",
    }


def run_defense_benchmark(variants: Sequence[str], attack: str, overrides: Sequence[str], out: Path) -> Path:
    """Run each variant against `attack` (reusing finished runs of the same config); write the
    table to `out` after each. Overhead is relative to the "vanilla" variant when listed."""
    configs = {spec: variant_config(spec, attack, overrides) for spec in variants}
    results: dict[str, Path] = {}
    for spec in sorted(variants, key=lambda spec: spec != "vanilla"):
        results[spec] = run_or_reuse(configs[spec], "defense", spec)
        vanilla = load_metrics(results["vanilla"])["train"]["seconds"] if "vanilla" in results else None
        write_table([defense_row(s, results[s], vanilla) for s in variants if s in results], out)
    return out
