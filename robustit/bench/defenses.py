"""The defense benchmark (paper Table 2 and its ablations): each defense variant tuned on the
same poisoned data with the demo's model, data, tuning and seed, one run each, into the
result store, and one table of them rendered from it.

A variant is `name[:key=value[:key=value ...]]` (`robustit.bench.grid.variant_config`), e.g.
"robustit:alpha=3:gamma=0.3". "overhead" is tuning seconds / VanillaIT's tuning seconds in
this table; runs stored by an earlier invocation or another machine were timed there, so
compare ratios of runs made in one invocation (`robustit bench overhead` times both in one
process). Where a variant flags training samples (BYORn), the table adds the detection
columns (`robustit.bench.tables.detection_columns`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from robustit.atomic import write_atomic
from robustit.bench.grid import Block, GridSpec, grid_runs, run_grid
from robustit.bench.tables import attack_columns, detection_columns
from robustit.report import markdown_table
from robustit.store import ResultStore

COMPONENTS = ("vanilla", "aar", "idr", "robustit")
PAPER_ABLATIONS = COMPONENTS + (
    "robustit:alpha=1", "robustit:alpha=3",
    "robustit:gamma=0.3", "robustit:gamma=0.8",
    "robustit:beta=0", "robustit:beta=0.1", "robustit:beta=0.3", "robustit:beta=0.5", "robustit:beta=0.7", "robustit:beta=1",
)
PRESETS = {"components": COMPONENTS, "paper": PAPER_ABLATIONS}


def defense_grid(variants: Sequence[str], attack: str, overrides: Sequence[str]) -> GridSpec:
    """The grid of the benchmark: every variant against `attack`, VanillaIT first."""
    ordered = tuple(sorted(variants, key=lambda spec: spec != "vanilla"))
    return GridSpec("bench-defenses", (Block((attack,), ordered),), tuple(overrides))


def run_defense_benchmark(variants: Sequence[str], attack: str, overrides: Sequence[str], out: Path, store: ResultStore) -> Path:
    """Run each variant against `attack` (skipping runs the store holds); write the table, in
    the order of `variants`, to `out`. Overhead is relative to the "vanilla" variant when listed."""
    spec = defense_grid(variants, attack, overrides)
    runs = grid_runs(spec)
    same = sorted(set(variants) - {run.defense for run in runs})
    if same:
        raise ValueError(f"defense variant(s) {same} are the same run as another listed variant (a setting at its default)")
    run_grid(spec, store)
    records = {run.defense: store.get(run.config_hash)["metrics"] for run in runs}
    vanilla = records["vanilla"]["train"]["seconds"] if "vanilla" in records else None
    with_detection = any("detection" in metrics for metrics in records.values())
    rows = []
    for variant in variants:
        train = records[variant]["train"]
        rows.append({
            "defense": variant,
            **attack_columns(records[variant]),
            "tuning s": f"{train['seconds']:.0f}",
            "overhead": f"{train['seconds'] / vanilla:.2f}" if vanilla else "-",
            "extra passes/step": f"{train['extra_forward_passes'] / train['steps']:.2f}",
            **(detection_columns(records[variant]) if with_detection else {}),
        })
    return write_atomic(out, markdown_table(rows) + "\n")
