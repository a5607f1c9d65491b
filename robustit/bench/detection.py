"""The detection benchmark: BYORn's detector alone (`robustit scan`) on every case of a grid
file (`configs/grids/detection.yaml`: attacks, targets, poison rates, clean data), each scan
recorded in the scan store (the `scans/` folder of the result store, a `ResultStore` of its
own, so a scan's record never stands in for the tuned run of the same config), and one
Markdown table rendered from that store alone:

    robustit bench detection [--config GRID.yaml] [--set ...] [--store results] [--out TABLE.md]

A row per case: the attack, its target, the poison rate, the poisoned and the total training
samples, the AUROC of the detector's score, then per threshold rule of byorn (the scan's
`thresholds`, all on the same scores) the samples flagged, the precision and the recall of
the flags (percent). Scans already in the store are not redone.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from robustit.bench.grid import GridSpec, describe_plan, grid_runs, load_grid, plan
from robustit.bench.tables import cell, metric, write_rendered
from robustit.config import PACKAGED_CONFIGS
from robustit.defenses.byorn import THRESHOLDS
from robustit.report import markdown_table
from robustit.rundir import RunDirectory
from robustit.store import ResultStore, make_record

DETECTION_GRID = PACKAGED_CONFIGS / "grids" / "detection.yaml"
SCANS = "scans"


def run_detection_benchmark(grid: str | Path | None, overrides: Sequence[str], out: Path, store: ResultStore,
                            progress: bool = True, dry_run: bool = False) -> Path | None:
    """Scan every case of `grid` (default the packaged detection grid; `overrides` on every
    case) that the scan store of `store` does not hold, recording each; write the table to `out`.
    With `dry_run`, print the plan, scan nothing and write no table (returns None)."""
    from robustit.scan import scan

    spec = load_grid(grid or DETECTION_GRID)
    spec = dataclasses.replace(spec, overrides=(*spec.overrides, *overrides))
    scans = ResultStore(store.root / SCANS)
    runs = plan(spec, scans)
    if dry_run:
        print(describe_plan(runs, scans, (0, 1)), flush=True)
        return None
    for run in runs:
        if not run.stored:
            metrics = scan(run.config, RunDirectory(run.config.run_dir()), progress)
            scans.put(make_record(run.config, metrics, {}))
    command = " ".join(["robustit bench detection", *([f"--config {grid}"] if grid else []),
                        *(f"--set {o}" for o in overrides), "--store", str(store.root)])
    return render_detection_table(spec, scans, out, command)


def detection_row(record: dict[str, Any]) -> dict[str, str]:
    """One case's row (see the module docstring) from its scan record."""
    config, metrics = record["config"], record["metrics"]
    attack = config.get("attack") or {}
    rate = attack.get("poison_rate", 0.0)
    row = {
        "attack": attack.get("name", "-") if rate else "none (clean)",
        "target": attack.get("target", "-") if rate else "-",
        "rate": f"{rate:g}",
        "poisoned": cell([metric(metrics, ("detection", "n_poisoned"))], 0),
        "samples": cell([metric(metrics, ("detection", "n_samples"))], 0),
        f"AUROC ({config['defense']['params']['score']})": cell([metric(metrics, ("detection", "auroc"))], 3),
    }
    for rule in THRESHOLDS:
        found = metrics.get("thresholds", {}).get(rule, {})
        row[f"{rule}: flagged"] = cell([metric(found, ("n_flagged",))], 0)
        row[f"{rule}: precision"] = cell([metric(found, ("precision",))], 1)
        row[f"{rule}: recall"] = cell([metric(found, ("recall",))], 1)
    return row


def detection_table(spec: GridSpec, store: ResultStore) -> str:
    """The table of the grid's scans found in the store, in the grid file's order."""
    records = [record for run in grid_runs(spec) if (record := store.get(run.config_hash)) is not None]
    if not records:
        return f"No scan of grid {spec.name!r} is in the scan store {store.root} yet."
    return markdown_table([detection_row(record) for record in records])


def render_detection_table(spec: GridSpec, store: ResultStore, out: str | Path, command: str) -> Path:
    """Write the table to `out` (atomically) under a comment naming `command`, which redoes it."""
    return write_rendered(out, detection_table(spec, store), command)
