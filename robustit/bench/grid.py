"""Grids of runs into the result store: `robustit bench grid --config GRID.yaml [--shard i/n] [--dry-run]`.

A grid file:

    name: attacks                          # the runs are named <name>/<defense variant>
    layers: [tasks/vqa]                    # packaged configs under the attack's (optional)
    overrides: [evaluate_base=false]       # settings of every run (optional)
    blocks:                                # each block is a product of its lists
      - attacks: [badnets, sig]            # packaged attack configs (configs/attacks/)
        defenses: [vanilla, "robustit:alpha=3"]   # defense variants (`variant_config`)
        poison_rates: [0.05, 0.1]          # optional; the attack config's rate when left out
        seeds: [0, 1, 2]                   # optional; sets train.seed and attack.seed
        overrides: [train.max_steps=50]    # settings of this block's runs (optional)

A run's config is `variant_config(defense, attack, overrides, layers)` (the packaged benchmark
config, the grid's layers, the attack and defense configs, then evaluate_base=false, then
name=<grid name>, the grid's and the block's overrides, attack.poison_rate, train.seed and
attack.seed, then the variant's parameters),
named <grid name>/<variant slug> so each variant runs in its own directory. The blocks are
expanded, de-duplicated by config hash and sorted by it; shard i of n holds the runs at
positions p with p % n == i of that list, whatever is stored already, so shards on several
machines partition the grid (combine their stores with `ResultStore.merge`). Runs whose
config hash is in the store are skipped, so a killed grid resumes; with `resume` the run it
was killed in goes on from its last checkpoint (`robustit bench grid --resume`).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml

from robustit.config import RESULT_NEUTRAL_FIELDS, ExperimentConfig, check_packaged_layer, known_components, packaged_config
from robustit.store import ResultStore, dotted

log = logging.getLogger(__name__)
T = TypeVar("T")
Runner = Callable[[ExperimentConfig, ResultStore], Any]
GRID_KEYS = ("name", "layers", "overrides", "blocks")
BLOCK_KEYS = ("attacks", "defenses", "poison_rates", "seeds", "overrides")


def variant_config(spec: str, attack: str, overrides: Sequence[str], layers: Sequence[str] = ()) -> ExperimentConfig:
    """The config of variant `spec` against `attack` over the packaged config `layers` (e.g.
    "tasks/vqa"), named <name>/<slug of spec>, where <name> is bench-defenses unless the
    overrides set it (so each variant and each set of overrides runs in its own directory)."""
    name, *settings = spec.split(":")
    for setting in settings:
        if "=" not in setting:
            raise ValueError(f"defense variant {spec!r}: {setting!r} must look like key=value")
    if name == "vanilla" and settings:
        raise ValueError(f"defense variant {spec!r}: vanilla has no parameters")
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "-", spec).replace("=", "")
    config = packaged_config(
        [*layers, f"attacks/{attack}", f"defenses/{name}"],
        ["evaluate_base=false", "name=bench-defenses", "output_dir=runs/{name}/{attack}-p{poison_rate}-seed{seed}",
         *overrides, *(f"defense.params.{setting}" for setting in settings)],
    )
    return dataclasses.replace(config, name=f"{config.name}/{slug}")


@dataclass(frozen=True)
class Block:
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    poison_rates: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class GridSpec:
    name: str
    blocks: tuple[Block, ...]
    overrides: tuple[str, ...] = ()
    path: Path | None = None
    layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its config and hash, the labels it was listed under and whether the
    store held it when planned."""

    config: ExperimentConfig = field(repr=False)
    config_hash: str
    attack: str
    defense: str
    poison_rate: float | None
    seed: int
    stored: bool = False
    setting: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        """The defense variant as the grid spells it, followed by `setting`, the overrides of
        its block that change the outcome (`RESULT_NEUTRAL_FIELDS` left out), where it has any:
        a block's runs never share a row with another block's runs of other settings."""
        return f"{self.defense} [{'; '.join(self.setting)}]" if self.setting else self.defense

    @property
    def as_configured(self) -> bool:
        """Whether the run is its defense as the defense's config gives it: no parameter set in
        the grid's spelling ("name:key=value") and no outcome-changing block override."""
        return ":" not in self.defense and not self.setting

    @property
    def label(self) -> str:
        return f"{self.attack}, {self.variant}, rate {self.poison_rate}, seed {self.seed} ({self.config_hash[:16]})"


def _strings(where: str, value: Any, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: expected a {'non-empty ' if required else ''}list of strings, got {value!r}")
    return tuple(value)


def _overrides(where: str, value: Any) -> tuple[str, ...]:
    overrides = _strings(where, value, required=False)
    for i, text in enumerate(overrides):
        if "=" not in text:
            raise ValueError(f"{where}[{i}]: {text!r} must look like key.sub=value")
    return overrides


def _block(where: str, raw: Any) -> Block:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping with keys {list(BLOCK_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(BLOCK_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(BLOCK_KEYS)}")
    for key in ("attacks", "defenses"):
        if key not in raw:
            raise ValueError(f"{where}.{key}: missing")
    attacks = _strings(f"{where}.attacks", raw["attacks"], required=True)
    known = known_components("attacks")
    for i, attack in enumerate(attacks):
        if attack not in known:
            raise ValueError(f"{where}.attacks[{i}]: no attack {attack!r}; known: {known}")
    defenses = _strings(f"{where}.defenses", raw["defenses"], required=True)
    known = known_components("defenses")
    for i, defense in enumerate(defenses):
        if defense.split(":")[0] not in known:
            raise ValueError(f"{where}.defenses[{i}]: no defense {defense.split(':')[0]!r}; known: {known}")
    rates = raw.get("poison_rates")
    if rates is not None and not (
        isinstance(rates, list) and rates
        and all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1 for r in rates)
    ):
        raise ValueError(f"{where}.poison_rates: expected a non-empty list of numbers in [0, 1), got {rates!r}")
    seeds = raw.get("seeds")
    if seeds is not None and not (
        isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ValueError(f"{where}.seeds: expected a non-empty list of non-negative integers, got {seeds!r}")
    return Block(attacks, defenses, tuple(float(r) for r in rates or ()), tuple(seeds or ()),
                 _overrides(f"{where}.overrides", raw.get("overrides")))


def load_grid(path: str | Path) -> GridSpec:
    """The grid file at `path`; a ValueError naming the file and the key for anything wrong
    in its structure (settings that no config has are reported by `expand`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a grid file must hold a mapping with keys {list(GRID_KEYS)}")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {list(GRID_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"{path}: name: expected a non-empty name without spaces, got {name!r}")
    blocks = raw.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"{path}: blocks: expected a non-empty list of blocks, got {blocks!r}")
    layers = _strings(f"{path}: layers", raw.get("layers"), required=False)
    for i, layer in enumerate(layers):
        try:
            check_packaged_layer(layer)
        except ValueError as error:
            raise ValueError(f"{path}: layers[{i}]: {error}") from None
    return GridSpec(
        name=name,
        blocks=tuple(_block(f"{path}: blocks[{i}]", block) for i, block in enumerate(blocks)),
        overrides=_overrides(f"{path}: overrides", raw.get("overrides")),
        path=path,
        layers=layers,
    )


def outcome_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
    """The `overrides` (key=value) whose key is not one of `RESULT_NEUTRAL_FIELDS`."""
    return tuple(o for o in overrides if o.partition("=")[0].strip() not in RESULT_NEUTRAL_FIELDS)


def grid_runs(spec: GridSpec) -> list[GridRun]:
    """Every run of the grid once (the first listing of a config hash wins), in the order of
    the grid file: block, attack, defense, rate, seed."""
    runs: dict[str, GridRun] = {}
    where = f"{spec.path}: " if spec.path else ""
    for b, block in enumerate(spec.blocks):
        for attack in block.attacks:
            for defense in block.defenses:
                for rate in block.poison_rates or (None,):
                    for seed in block.seeds or (None,):
                        overrides = [f"name={spec.name}", *spec.overrides, *block.overrides]
                        if rate is not None:
                            overrides.append(f"attack.poison_rate={rate}")
                        if seed is not None:
                            overrides += [f"train.seed={seed}", f"attack.seed={seed}"]
                        try:
                            config = variant_config(defense, attack, overrides, spec.layers)
                            key = config.config_hash()
                        except (ValueError, KeyError) as error:
                            raise ValueError(f"{where}blocks[{b}] (attack {attack!r}, defense {defense!r}): {error}") from error
                        if key not in runs:
                            runs[key] = GridRun(config, key, attack, defense, config.attack.poison_rate if config.attack else None,
                                                config.train.seed, setting=outcome_overrides(block.overrides))
    places: dict[Path, GridRun] = {}
    for run in runs.values():
        other = places.setdefault(run.config.run_dir(), run)
        if other is not run:
            raise ValueError(f"{where}runs {other.label} and {run.label} differ but share the run directory "
                             f"{run.config.run_dir()}: give their blocks different grid files or names")
    return list(runs.values())


def expand(spec: GridSpec) -> list[ExperimentConfig]:
    """The configs of the grid, de-duplicated by config hash and sorted by it."""
    return [run.config for run in sorted(grid_runs(spec), key=lambda run: run.config_hash)]


def shard(items: Sequence[T], i: int, n: int) -> list[T]:
    """The items at positions p with p % n == i."""
    if isinstance(i, bool) or isinstance(n, bool) or not isinstance(i, int) or not isinstance(n, int) or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need integers with 0 <= i < n")
    return [item for p, item in enumerate(items) if p % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n)."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    shard([], i, n)
    return i, n


def plan(spec: GridSpec, store: ResultStore, shard_of: tuple[int, int] = (0, 1)) -> list[GridRun]:
    """The runs of shard `shard_of` = (i, n) of the grid, sorted by config hash, each marked
    stored or not."""
    runs = shard(sorted(grid_runs(spec), key=lambda run: run.config_hash), *shard_of)
    return [dataclasses.replace(run, stored=run.config_hash in store) for run in runs]


def record_seconds(record: dict[str, Any]) -> float | None:
    """The run's wall time: the sum of its record's stage timings (None if it has none)."""
    timings = record["metrics"].get("timings")
    return float(sum(timings.values())) if isinstance(timings, dict) and timings else None


def estimate_seconds(runs: Sequence[GridRun], store: ResultStore) -> float | None:
    """Expected wall time of the runs not stored, from the store's own timings: per run the
    mean total stage time of the stored records with the same attack and defense, else the
    same defense, else all records. None when the store has no timed record."""
    timed = [(dotted(r, "attack.name"), dotted(r, "defense.name"), s) for r in store.records() if (s := record_seconds(r)) is not None]
    if not timed:
        return None
    total = 0.0
    for run in runs:
        if run.stored:
            continue
        attack = run.config.attack.name if run.config.attack else None
        defense = run.config.defense.name if run.config.defense else None
        for pool in (
            [s for a, d, s in timed if a == attack and d == defense],
            [s for _, d, s in timed if d == defense],
            [s for *_, s in timed],
        ):
            if pool:
                total += statistics.fmean(pool)
                break
    return total


def describe_plan(runs: Sequence[GridRun], store: ResultStore, shard_of: tuple[int, int] = (0, 1)) -> str:
    """The dry-run listing: one line per run, then the counts and the time estimate."""
    lines = [
        f"{run.attack:<10} {run.variant:<24} rate {run.poison_rate!s:<5} seed {run.seed:<3} "
        f"{run.config_hash[:16]}  {'stored' if run.stored else 'to run'}"
        for run in runs
    ]
    todo = sum(not run.stored for run in runs)
    seconds = estimate_seconds(runs, store)
    guess = (f"about {seconds:.0f} s ({seconds / 3600:.1f} h), from the timings stored in {store.root}"
             if seconds is not None else f"unknown (no timed record in {store.root})")
    lines.append(f"shard {shard_of[0]}/{shard_of[1]}: {len(runs)} runs, {len(runs) - todo} stored, {todo} to run; "
                 f"estimated time of the runs to do: {guess}")
    return "\n".join(lines)


def default_runner(progress: bool = True, resume: bool = False) -> Runner:
    def run(config: ExperimentConfig, store: ResultStore) -> None:
        from robustit.experiment import Experiment

        Experiment(config, progress).run(store=store, resume=resume)

    return run


def run_grid(
    spec: GridSpec,
    store: ResultStore,
    shard_of: tuple[int, int] = (0, 1),
    dry_run: bool = False,
    runner: Runner | None = None,
    progress: bool = True,
    resume: bool = False,
) -> list[GridRun]:
    """Run the runs of shard `shard_of` = (i, n) of the grid that the store lacks, each with
    `runner(config, store)` (default: `Experiment(config, progress).run(store=store,
    resume=resume)`, which stores the run's record; `resume` continues a run killed mid-way
    from its run directory); with `dry_run`, print the plan and run nothing. Returns the
    shard's runs as planned (`stored`: in the store before this call)."""
    runs = plan(spec, store, shard_of)
    if dry_run:
        print(describe_plan(runs, store, shard_of), flush=True)
        return runs
    runner = runner or default_runner(progress, resume)
    todo = [run for run in runs if not run.stored]
    log.info("grid %s, shard %d/%d: %d runs, %d stored, %d to run", spec.name, *shard_of, len(runs), len(runs) - len(todo), len(todo))
    for k, run in enumerate(todo, 1):
        log.info("grid: run %d/%d: %s", k, len(todo), run.label)
        runner(run.config, store)
        if run.config_hash not in store:
            raise RuntimeError(f"grid run {run.label} finished without storing its record in {store.root}")
    return runs
