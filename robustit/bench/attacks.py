"""The attack benchmark: the packaged grid `configs/grids/attacks.yaml` (VanillaIT on every
attack with the demo's model, data, tuning and poison rate), run into the result store and
rendered from it as one Markdown table."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from robustit.bench.grid import load_grid, run_grid
from robustit.bench.tables import render_grid_table
from robustit.config import PACKAGED_CONFIGS
from robustit.store import ResultStore

ATTACK_GRID = PACKAGED_CONFIGS / "grids" / "attacks.yaml"


def run_attack_benchmark(attacks: Sequence[str] | None, overrides: Sequence[str], out: Path, store: ResultStore) -> Path:
    """Run the attack grid (only `attacks` when given, `overrides` on every run), skipping runs
    the store holds; write the table of the store's records to `out`."""
    spec = load_grid(ATTACK_GRID)
    blocks = tuple(dataclasses.replace(block, attacks=tuple(attacks or block.attacks)) for block in spec.blocks)
    spec = dataclasses.replace(spec, blocks=blocks, overrides=(*spec.overrides, *overrides))
    run_grid(spec, store)
    command = "robustit bench attacks" + "".join(f" --set {o}" for o in overrides) + (f" --attacks {','.join(attacks)}" if attacks else "")
    return render_grid_table(spec, store, out, command, row_label=("attack",))
