"""The benchmark report (docs/benchmark.md) and its figures, rendered from the result store
alone (`robustit.store`; no run directory is read) for the runs of one grid, the benchmark's
(`robustit/configs/grids/benchmark.yaml` by default), so it can be redone wherever the store is:

    robustit bench report [--config GRID.yaml] [--store results] [--out docs/benchmark.md]

Only the grid's runs enter (a probe or an older setting in the store never does). A setting is
the grid's runs of one attack, defense variant (as the grid spells it: vanilla, byorn,
byorn:replace=drop, ..., followed by its block's overrides where they change the outcome:
`GridRun.variant`) and poison rate, over its seeds; it is one row of a table, with mean ±
sample std over the seeds stored (`robustit.bench.tables.cell`). Runs at poison rate 0 form the
clean group; the others are grouped by attack and poison rate. The report holds

    leaderboard  per defense variant v, over the attacks a it was run on at the benchmark
                 poison rate 0.1, with ASR_a and CIDEr_a the means over v's seeds on a:
                     mean ASR = mean_a ASR_a        worst ASR = max_a ASR_a (and its attacks)
                     mean CIDEr = mean_a CIDEr_a    (clean test captions of the poisoned runs)
                     clean-data CIDEr               mean CIDEr of v's runs in the clean group
                     overhead = sum_p T_v(p) / sum_p T_vanilla(p), T = train.seconds, over
                                the pairs p of a run of v and VanillaIT's run of the same
                                attack, rate, seed and block overrides; a run of a test-time-only defense
                                (`robustit.train.shared.shares_tuning`) counts T_vanilla(p):
                                its tuning is VanillaIT's, whatever that tuning's seconds were
                     test-time overhead = the same ratio of timings.evaluation (the
                                evaluation's seconds: a test-time defense's cost is there)
                     extra passes/step = mean over v's runs of train.extra_forward_passes /
                                train.steps (passes through the tuned model beyond VanillaIT's)
                 sorted by the number of attacks, most first (a variant run on a few attacks
                 does not rank above one run on all), then by worst ASR, then by mean CIDEr,
                 highest first
    tables       per group, a row per setting: the attack, quality and tuning-time columns
                 (`robustit.bench.tables.run_columns`) and the number of seeds stored
    detection    a row per setting with detection metrics (data-side defenses: flags on the
                 training set) and a row per setting with refusals (test-time detectors:
                 refused triggered and clean test inputs, and the ASR after refusal)
    figures      `robustit.bench.report_figures` (the training curves of one run per variant,
                 `training_curve_runs`, where records hold train.curves), as PNGs in
                 `figures_folder` (figures/<report name>/ beside the report) linked relative
                 to it; a figure the store has no data for is named as skipped
"""
from __future__ import annotations

import itertools
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from robustit.atomic import write_atomic
from robustit.bench import report_figures
from robustit.bench.grid import GridRun, GridSpec, estimate_seconds, grid_runs, plan, record_seconds
from robustit.bench.tables import (ATTACK_COLUMNS, DETECTION_COLUMNS, REFUSAL_COLUMNS, SEVERAL_SEEDS_NOTE, TASK_COLUMNS, cell,
                                   cells, metric, run_columns, stored_settings, write_rendered)
from robustit.config import PACKAGED_CONFIGS
from robustit.defenses import build_defense
from robustit.report import markdown_table
from robustit.store import ResultStore
from robustit.train.shared import shares_tuning

BENCHMARK_GRID = PACKAGED_CONFIGS / "grids" / "benchmark.yaml"
BENCHMARK_RATE = 0.1
CLEAN = "clean"
VANILLA = "VanillaIT"
PATHS = {title: path for title, path, _ in (*ATTACK_COLUMNS, *TASK_COLUMNS["caption"])}
RADAR_METRICS = ("BLEU_4", "METEOR", "CIDEr", "object named", "ASR")

Group = tuple[str, float | None]
VanillaKey = tuple[str, float, int, tuple[str, ...]]


@dataclass(frozen=True)
class Setting:
    """The stored runs of one setting (see the module docstring) in its group, in grid order."""

    group: Group
    attack: str
    variant: str
    rate: float
    runs: tuple[tuple[GridRun, dict[str, Any]], ...]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [record["metrics"] for _, record in self.runs]

    @property
    def as_configured(self) -> bool:
        """Whether the setting is its defense as configured (`GridRun.as_configured`)."""
        return self.runs[0][0].as_configured


def shown(run: GridRun) -> str:
    """The run's defense variant (`GridRun.variant`) as the report names it: VanillaIT in place
    of vanilla, the grid's spelling otherwise."""
    return VANILLA + run.variant[len(run.defense):] if run.defense == "vanilla" else run.variant


def run_rate(run: GridRun) -> float:
    """The run's poison rate (0 without an attack)."""
    return run.config.attack.poison_rate if run.config.attack is not None else 0.0


def attack_group(run: GridRun) -> Group:
    """(attack name, poison rate), or (CLEAN, None) for a run at poison rate 0."""
    return (run.attack, run_rate(run)) if run_rate(run) else (CLEAN, None)


def grid_settings(spec: GridSpec, store: ResultStore) -> tuple[list[Setting], int, int]:
    """The grid's settings with at least one run stored (`stored_settings`), clean data first,
    then by attack and rate, VanillaIT first, then in grid order; and the numbers of the grid's
    runs and of those stored."""
    runs = grid_runs(spec)
    out = [Setting(attack_group(members[0][0]), attack, shown(members[0][0]), run_rate(members[0][0]), tuple(members))
           for (attack, _, _), members in stored_settings(runs, store).items()]
    out.sort(key=lambda s: (s.group[0] != CLEAN, s.group[0], s.group[1] or 0.0, s.variant != VANILLA))
    return out, len(runs), sum(len(s.runs) for s in out)


def mean_metric(metrics_list: Iterable[dict[str, Any]], path: Sequence[str]) -> float | None:
    """The mean of the value at `path` over the metrics that have one (None if none has)."""
    present = [value for metrics in metrics_list if (value := metric(metrics, path)) is not None]
    return statistics.fmean(present) if present else None


def group_title(group: Group) -> str:
    return "Clean data (nothing poisoned)" if group[0] == CLEAN else f"{group[0]}, poison rate {group[1]:g}"


def attack_tables(found: Sequence[Setting]) -> str:
    """A section per group: a row per setting."""
    sections = []
    for group, members in itertools.groupby(found, key=lambda s: s.group):
        rows = [{"defense": s.variant, **run_columns(s.metrics, with_tuning=True), "n seeds": str(len(s.runs))}
                for s in members]
        sections.append(f"### {group_title(group)}\n\n{markdown_table(rows)}")
    return "\n\n".join(sections)


def _overhead(runs: Sequence[tuple[GridRun, dict[str, Any]]], vanilla: dict[VanillaKey, dict[str, Any]],
              seconds: Sequence[str], shared_counts_as_vanilla: bool = False) -> float | None:
    pairs = []
    for run, record in runs:
        partner = vanilla.get((run.attack, run_rate(run), run.seed, run.setting))
        if partner is None:
            continue
        theirs = metric(partner["metrics"], seconds)
        shared = shared_counts_as_vanilla and shares_tuning(
            build_defense(run.config.defense) if run.config.defense is not None else None)
        pairs.append((theirs if shared else metric(record["metrics"], seconds), theirs))
    timed = [(mine, theirs) for mine, theirs in pairs if mine is not None and theirs]
    return sum(mine for mine, _ in timed) / sum(theirs for _, theirs in timed) if timed else None


def extra_passes_per_step(metrics_list: Iterable[dict[str, Any]]) -> float | None:
    """Mean over the runs of train.extra_forward_passes / train.steps: the defense's passes
    through the tuned model beyond VanillaIT's one per step (None where no run has both)."""
    ratios = [extra / steps for m in metrics_list
              if (extra := metric(m, ("train", "extra_forward_passes"))) is not None and (steps := metric(m, ("train", "steps")))]
    return statistics.fmean(ratios) if ratios else None


def _leaderboard_row(variant: str, at_rate: Sequence[Setting], clean: Sequence[Setting],
                     vanilla: dict[VanillaKey, dict[str, Any]]) -> tuple[tuple[Any, ...], dict[str, str]]:
    """The variant's leaderboard row and its sort key."""
    by_attack: dict[str, list[dict[str, Any]]] = {}
    for s in at_rate:
        by_attack.setdefault(s.attack, []).extend(s.metrics)
    asr = {attack: value for attack, metrics in sorted(by_attack.items())
           if (value := mean_metric(metrics, PATHS["ASR"])) is not None}
    ciders = [value for metrics in by_attack.values() if (value := mean_metric(metrics, PATHS["CIDEr"])) is not None]
    worst = max(asr.values(), default=None)
    cider = statistics.fmean(ciders) if ciders else None
    row = {
        "defense": variant,
        "attacks": str(len(by_attack)),
        "runs": str(sum(len(s.runs) for s in at_rate)),
        "mean ASR": cell([statistics.fmean(asr.values()) if asr else None], 1),
        "worst ASR": "-" if worst is None else f"{worst:.1f} ({', '.join(a for a, v in asr.items() if v == worst)})",
        "mean CIDEr": cell([cider], 1),
        "clean-data CIDEr": cell([mean_metric((m for s in clean for m in s.metrics), PATHS["CIDEr"])], 1),
        "overhead": cell([_overhead([r for s in at_rate for r in s.runs], vanilla, ("train", "seconds"), True)], 2),
        "test-time overhead": cell([_overhead([r for s in at_rate for r in s.runs], vanilla, ("timings", "evaluation"))], 2),
        "extra passes/step": cell([extra_passes_per_step(m for s in at_rate for m in s.metrics)], 2),
    }
    return (worst is None, -len(by_attack), worst or 0.0, cider is None, -(cider or 0.0)), row


def leaderboard(found: Sequence[Setting]) -> str:
    """The leaderboard at `BENCHMARK_RATE` (see the module docstring), or a note where no
    stored run has that rate."""
    at_rate = [s for s in found if s.group[1] == BENCHMARK_RATE]
    if not at_rate:
        return f"No run at poison rate {BENCHMARK_RATE:g} stored yet."
    vanilla = {(run.attack, run_rate(run), run.seed, run.setting): record
               for s in at_rate for run, record in s.runs if run.defense == "vanilla"}
    rows = [_leaderboard_row(variant, [s for s in at_rate if s.variant == variant],
                             [s for s in found if s.group[0] == CLEAN and s.variant == variant], vanilla)
            for variant in dict.fromkeys(s.variant for s in at_rate)]
    return markdown_table([row for _, row in sorted(rows, key=lambda pair: pair[0])])


def _setting_labels(setting: Setting) -> dict[str, str]:
    return {"attack": setting.attack if setting.rate else CLEAN, "rate": f"{setting.rate:g}",
            "defense": setting.variant, "n seeds": str(len(setting.runs))}


def detection_table(found: Sequence[Setting]) -> str:
    """A row per setting whose runs have detection metrics, or a note where none has."""
    flagging = [s for s in found if any("detection" in m for m in s.metrics)]
    if not flagging:
        return "No stored run has detection metrics (no data-side defense was run)."
    return markdown_table([{**_setting_labels(s), **cells(s.metrics, DETECTION_COLUMNS)} for s in flagging])


def refusal_table(found: Sequence[Setting]) -> str:
    """A row per setting whose runs refused test inputs (a test-time detector), with its ASR
    after refusal, or a note where none has."""
    refusing = [s for s in found if any("refusal" in m for m in s.metrics)]
    if not refusing:
        return "No stored run has refusals (no test-time detector was run)."
    asr = next(column for column in ATTACK_COLUMNS if column[0] == "ASR")
    return markdown_table([{**_setting_labels(s), **cells(s.metrics, (*REFUSAL_COLUMNS, asr))} for s in refusing])


def radar_polygons(found: Sequence[Setting], attack: str) -> dict[str, list[float]]:
    """Per variant on `attack` at the benchmark rate, the radar's values in [0, 1]: BLEU_4,
    METEOR and CIDEr over their maximum among the variants, object named / 100, (100 - ASR) / 100.
    Variants lacking one of them are left out."""
    raw = {}
    for variant in dict.fromkeys(s.variant for s in found if s.group == (attack, BENCHMARK_RATE)):
        metrics = [m for s in found if s.group == (attack, BENCHMARK_RATE) and s.variant == variant for m in s.metrics]
        values = [mean_metric(metrics, PATHS[title]) for title in RADAR_METRICS]
        if None not in values:
            raw[variant] = values
    peaks = [max(values[k] for values in raw.values()) for k in range(3)] if raw else []
    return {variant: [*(v / peak if peak else 0.0 for v, peak in zip(values[:3], peaks)), values[3] / 100,
                      (100 - values[4]) / 100]
            for variant, values in raw.items()}


def asr_cider_points(found: Sequence[Setting]) -> dict[tuple[str, str], tuple[float, float]]:
    """(variant, attack) -> (mean ASR, mean clean CIDEr) at the benchmark rate, where both exist."""
    points = {}
    for variant, attack in dict.fromkeys((s.variant, s.group[0]) for s in found if s.group[1] == BENCHMARK_RATE):
        metrics = [m for s in found if (s.variant, s.group) == (variant, (attack, BENCHMARK_RATE)) for m in s.metrics]
        asr, cider = mean_metric(metrics, PATHS["ASR"]), mean_metric(metrics, PATHS["CIDEr"])
        if asr is not None and cider is not None:
            points[(variant, attack)] = (asr, cider)
    return points


def poison_rate_curves(found: Sequence[Setting]) -> dict[str, dict[str, dict[float, float]]]:
    """attack -> variant -> {poison rate: mean ASR} (rate 0: the grid's clean-data runs listed
    under the attack), for the attacks with a variant run at several rates: those variants and VanillaIT."""
    curves: dict[str, dict[str, dict[float, float]]] = {}
    for attack in sorted({s.attack for s in found}):
        lines: dict[str, dict[float, float]] = {}
        for variant in dict.fromkeys(s.variant for s in found if s.attack == attack):
            mine = [s for s in found if s.attack == attack and s.variant == variant]
            line = {rate: value for rate in sorted({s.rate for s in mine})
                    if (value := mean_metric((m for s in mine if s.rate == rate for m in s.metrics), PATHS["ASR"])) is not None}
            if line:
                lines[variant] = line
        if any(len(line) > 1 for line in lines.values()):
            curves[attack] = {v: line for v, line in lines.items() if len(line) > 1 or v == VANILLA}
    return curves


def training_curve_runs(found: Sequence[Setting]) -> dict[str, tuple[str, dict[str, list[float]]]]:
    """variant -> (label, curves) of one run per variant whose record holds train.curves: at
    the benchmark rate, BadNets first, then the attacks in order, the lowest seed."""
    chosen: dict[str, tuple[str, dict[str, list[float]]]] = {}
    order = sorted((s for s in found if s.rate == BENCHMARK_RATE), key=lambda s: (s.attack != "badnets", s.attack))
    for s in order:
        for run, record in sorted(s.runs, key=lambda pair: pair[0].seed):
            curves = record["metrics"].get("train", {}).get("curves")
            if s.variant not in chosen and isinstance(curves, dict):
                chosen[s.variant] = (f"{s.attack}, rate {s.rate:g}, seed {run.seed}", curves)
    return dict(sorted(chosen.items(), key=lambda item: (item[0] != VANILLA, item[0])))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text)


def _figure(png: bytes, name: str, title: str, figures_dir: Path, report_dir: Path) -> str:
    """Write the PNG to `figures_dir`; its Markdown image, linked relative to `report_dir`."""
    path = write_atomic(figures_dir / name, png)
    return f"![{title}]({Path(os.path.relpath(path, report_dir)).as_posix()})"


def figures(found: Sequence[Setting], figures_dir: Path, report_dir: Path) -> str:
    """Draw the figures the store has data for into `figures_dir`, one polygon, point set or
    line per defense as configured (variants with other settings are in the tables only); their
    Markdown (links relative to `report_dir`) and a line per figure skipped."""
    found = [s for s in found if s.as_configured]
    colours = report_figures.palette(sorted({s.variant for s in found}, key=lambda v: (v != VANILLA, v)))
    out = []
    attacks = sorted({s.group[0] for s in found if s.group[1] == BENCHMARK_RATE})
    radars = {attack: polygons for attack in attacks if (polygons := radar_polygons(found, attack))}
    for attack, polygons in radars.items():
        title = f"{attack}, poison rate {BENCHMARK_RATE:g}"
        out.append(_figure(report_figures.radar_figure(title, polygons, colours), f"radar-{_slug(attack)}.png",
                           f"radar: {title}", figures_dir, report_dir))
    if not radars:
        out.append(f"No radar figure: no stored run at poison rate {BENCHMARK_RATE:g} has ASR, caption and object metrics.")
    points = asr_cider_points(found)
    out.append(_figure(report_figures.asr_cider_figure(points, colours), "asr-vs-cider.png", "ASR against clean CIDEr",
                       figures_dir, report_dir) if points else
               f"No ASR-against-CIDEr figure: no stored run at poison rate {BENCHMARK_RATE:g} has ASR and CIDEr.")
    curves = poison_rate_curves(found)
    out.append(_figure(report_figures.asr_poison_rate_figure(curves, colours), "asr-vs-poison-rate.png",
                       "ASR against poison rate", figures_dir, report_dir) if curves else
               "No ASR-against-poison-rate figure: no attack has a defense variant run at several poison rates.")
    runs = training_curve_runs(found)
    out.append(_figure(report_figures.training_curves_figure(runs), "training-curves.png",
                       "LM loss and defense terms over tuning", figures_dir, report_dir) if runs else
               "No training-curve figure: no stored run records its loss curves (train.curves).")
    return "\n\n".join(out)


def grid_label(spec: GridSpec) -> str:
    """The grid file's path, relative to the working folder where it lies under it; its name without a file."""
    if spec.path is None:
        return spec.name
    path = Path(spec.path).resolve()
    return path.relative_to(Path.cwd()).as_posix() if path.is_relative_to(Path.cwd()) else str(path)


def wall_time(spec: GridSpec, store: ResultStore, found: Sequence[Setting]) -> str:
    """The grid's wall time from the store's timings: the stored runs' (`record_seconds`,
    summed) and the estimate for the others (`estimate_seconds`)."""
    done = sum(seconds for s in found for _, record in s.runs if (seconds := record_seconds(record)) is not None)
    runs = plan(spec, store)
    stored = (f"Wall time, from the records' stage timings: the stored runs took {_duration(done)} on the machines "
              "that made them (machine and torch threads are in each record)")
    if all(run.stored for run in runs):
        return stored + "."
    todo = estimate_seconds(runs, store)
    if todo is None:
        return stored + "; no record has timings to estimate the runs not stored from."
    return (f"{stored}; the runs not stored would take about {_duration(todo)} more at the same mean times per attack "
            f"and defense, the whole grid about {_duration(done + todo)} run one after another.")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def report_text(spec: GridSpec, store: ResultStore, figures_dir: Path, report_dir: Path) -> str:
    """The report's Markdown (figures drawn into `figures_dir` on the way)."""
    found, n_runs, n_stored = grid_settings(spec, store)
    grid = grid_label(spec)
    where = f"grid `{grid}`"
    title = f"# Benchmark report: grid {spec.name}"
    if not found:
        return f"{title}\n\nThe result store `{store.root}` holds none of the {n_runs} runs of the {where} yet: nothing to report."
    missing = (f" The runs not stored yet ({n_runs - n_stored}) are listed by `robustit bench grid --config "
               f"{grid} --dry-run`." if n_stored < n_runs else "")
    return "\n\n".join([
        title,
        f"Rendered from the result store `{store.root}` alone: {n_stored} of the {n_runs} runs of the {where}.{missing} "
        "ASR, key-word rates, caption metrics and object named are percentages; a row is a setting (the grid's runs of "
        "one attack, defense variant and poison rate), over the seeds stored. " + SEVERAL_SEEDS_NOTE,
        wall_time(spec, store, found),
        f"## Leaderboard, poison rate {BENCHMARK_RATE:g}",
        leaderboard(found),
        "Per defense variant over the attacks it was run on: mean and worst ASR over the attacks (each the mean over "
        "the variant's seeds on it; runs: how many), the mean clean-test CIDEr over the attacks, the CIDEr of its runs "
        "on clean data, overhead: its tuning seconds over VanillaIT's on the same attack, rate and seed, summed, test-time overhead: the same ratio of evaluation seconds, and its "
        "passes through the tuned model per step beyond VanillaIT's one. "
        "Sorted by the number of attacks run (most first), then by worst ASR, then by mean CIDEr. Tuning seconds compare only where the runs shared the machine alike.",
        "## Results per attack",
        attack_tables(found),
        "## Detection",
        detection_table(found),
        "Flagged: training samples the defense flagged; precision and recall (percent) of the flags and the AUROC of "
        "its suspicion score, against the attack's manifest.",
        refusal_table(found),
        "Refused trig. and refused clean: percent of the fully triggered and of the clean test inputs the test-time "
        "detector refused (its detection and false-alarm rates); ASR: after refusal (a refused input is not attacked).",
        "## Figures",
        "Each defense as its config gives it; variants with other parameters or settings (\"name:key=value\", "
        "\"name [override]\") are in the tables above only.",
        figures(found, figures_dir, report_dir),
    ])


def figures_folder(out: Path) -> Path:
    """Where the figures of the report `out` go: figures/<its file name without .md> beside
    it, so reports of several grids in one folder keep their own figures."""
    return Path(out).parent / "figures" / Path(out).stem


def render_report(spec: GridSpec, store: ResultStore, out: Path, command: str) -> Path:
    """Write the report of the grid's runs in `store` to `out` (atomically) under a comment
    naming `command`, the command that redoes it, and its figures to `figures_folder(out)`."""
    out = Path(out)
    return write_rendered(out, report_text(spec, store, figures_folder(out), out.parent), command)
