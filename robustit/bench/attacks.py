"""The attack benchmark: VanillaIT on every registered attack with the demo's model, data,
tuning and poison rate, one run each, collected into one Markdown table."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from robustit.attacks import ATTACKS
from robustit.config import packaged_config
from robustit.bench.common import attack_columns, run_or_reuse, write_table
from robustit.report import load_metrics


def attack_row(name: str, run_dir: Path) -> dict[str, str]:
    metrics = load_metrics(run_dir)
    return {"attack": name, **attack_columns(run_dir, metrics), "tuning s": f"{metrics['train']['seconds']:.0f}"}


def run_attack_benchmark(attacks: Sequence[str] | None, overrides: Sequence[str], out: Path) -> Path:
    """Run each attack (all registered ones by default), reusing finished runs of the same
    config; write the table to `out` after each."""
    rows = []
    for name in list(attacks or ATTACKS.names()):
        config = packaged_config([f"attacks/{name}"], ["name=bench-attacks", "evaluate_base=false", *overrides])
        rows.append(attack_row(name, run_or_reuse(config, "attack", name)))
        write_table(rows, out)
    return out
