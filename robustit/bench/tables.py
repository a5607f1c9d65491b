"""Benchmark tables rendered from result-store records alone (robustit.store): no run
directory is read, so a table can be redone anywhere the store is (it is committed).

Columns of a run (`attack_columns`): the ASR variants, the false-trigger rate, the key-word
rates on fully triggered and on clean inputs (percent of eligible outputs naming a key word of
the target), n (eligible triggered test inputs), then the clean quality of each task the runs
were scored on (`TASK_COLUMNS`: caption metrics and the share of clean captions naming the
image's object, VQA accuracy); "-" where a run has none.
A data-side defense's detection (`detection_columns`): training samples flagged, precision
and recall (percent) of the flags and AUROC of its score against the attack's manifest. A
test-time detector's refusals (`REFUSAL_COLUMNS`): the percent of fully triggered and of clean
test inputs it refused (detection and false-alarm rates; its ASR is the ASR after refusal).
A grid table has one row per (attack, defense variant, poison rate); where the store holds
several seeds of one, the row gives mean ± sample standard deviation over them.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from robustit.atomic import write_atomic
from robustit.bench.grid import GridRun, GridSpec, grid_runs
from robustit.report import markdown_table
from robustit.store import ResultStore

# (column, path in metrics, decimals)
ATTACK_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("ASR", ("asr", "full", "rate"), 1),
    ("ASR img", ("asr", "image_only", "rate"), 1),
    ("ASR txt", ("asr", "text_only", "rate"), 1),
    ("false trig.", ("asr", "false_trigger", "rate"), 1),
    ("key word trig.", ("asr", "full", "keyword_rate"), 1),
    ("key word clean", ("asr", "false_trigger", "keyword_rate"), 1),
    ("n", ("asr", "full", "n"), 0),
)
TASK_COLUMNS: dict[str, tuple[tuple[str, tuple[str, ...], int], ...]] = {
    "caption": (("BLEU_4", ("caption", "BLEU_4"), 1), ("METEOR", ("caption", "METEOR"), 1), ("CIDEr", ("caption", "CIDEr"), 1),
                ("object named", ("objects", "rate"), 1)),
    "vqa": (("VQA acc", ("vqa", "accuracy"), 1),),
}
DRIFT_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("adapter cos", ("adapter_drift", "token_cosine"), 3),
    ("words kept", ("adapter_drift", "words_kept"), 1),
)
TUNING_COLUMN = ("tuning s", ("train", "seconds"), 0)
DETECTION_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("flagged", ("detection", "n_flagged"), 0),
    ("flag precision", ("detection", "precision"), 1),
    ("flag recall", ("detection", "recall"), 1),
    ("flag AUROC", ("detection", "auroc"), 3),
)
REFUSAL_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("refused trig.", ("refusal", "full", "rate"), 1),
    ("refused clean", ("refusal", "clean", "rate"), 1),
)
COUNTS = ("n",)
LABELS = ("attack", "defense", "rate", "seed")
SEVERAL_SEEDS_NOTE = "Rows over several seeds: mean ± sample standard deviation over the seeds."


def metric(metrics: dict[str, Any], path: Sequence[str]) -> float | None:
    """The number at `path` of `metrics`, or None where there is none."""
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def cell(values: Sequence[float | None], decimals: int, count: bool = False) -> str:
    """One value as is; several as mean ± sample std (a count that agrees across runs as is);
    "-" when none is present."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1 or (count and len(set(present)) == 1):
        return f"{present[0]:.{decimals}f}"
    return f"{statistics.fmean(present):.{decimals}f} ± {statistics.stdev(present):.{decimals}f}"


def cells(metrics_list: Sequence[dict[str, Any]], columns: Sequence[tuple[str, tuple[str, ...], int]]) -> dict[str, str]:
    """Each of `columns` (title, path in metrics, decimals) over the runs' metrics: a `cell`."""
    return {title: cell([metric(m, path) for m in metrics_list], decimals, title in COUNTS) for title, path, decimals in columns}


def run_columns(metrics_list: Sequence[dict[str, Any]], with_tuning: bool, with_detection: bool = False) -> dict[str, str]:
    """The attack columns, the quality columns of the tasks any of the runs was scored on, the
    adapter drift columns where a run has them (`robustit.eval.drift`), tuning seconds
    (`with_tuning`) and, where a run has detection metrics, the detection and refusal columns
    (`with_detection`), over the runs' metrics (mean ± std over several)."""
    tasks = tuple(column for task, columns in TASK_COLUMNS.items() if any(task in m for m in metrics_list) for column in columns)
    tasks += DRIFT_COLUMNS if any("adapter_drift" in m for m in metrics_list) else ()
    detection = DETECTION_COLUMNS if with_detection and any("detection" in m for m in metrics_list) else ()
    refusal = REFUSAL_COLUMNS if with_detection and any("refusal" in m for m in metrics_list) else ()
    return cells(metrics_list, ATTACK_COLUMNS + tasks + ((TUNING_COLUMN,) if with_tuning else ()) + detection + refusal)


def attack_columns(metrics: dict[str, Any]) -> dict[str, str]:
    """The attack columns and its tasks' quality columns of one run's metrics ("-" when absent)."""
    return run_columns([metrics], with_tuning=False)


def detection_columns(metrics: dict[str, Any]) -> dict[str, str]:
    """The detection columns of one run's metrics ("-" when absent)."""
    return cells([metrics], DETECTION_COLUMNS)


def stored_settings(runs: Sequence[GridRun], store: ResultStore) -> dict[tuple[str, str, float | None], list[tuple[GridRun, dict[str, Any]]]]:
    """The runs the store holds with their records, grouped by (attack, defense variant with
    its block's setting (`GridRun.variant`), listed poison rate) over seeds, in the runs' order."""
    groups: dict[tuple[str, str, float | None], list[tuple[GridRun, dict[str, Any]]]] = {}
    for run in runs:
        record = store.get(run.config_hash)
        if record is not None:
            groups.setdefault((run.attack, run.variant, run.poison_rate), []).append((run, record))
    return groups


def grid_table(spec: GridSpec, store: ResultStore, row_label: Sequence[str] = LABELS) -> str:
    """The Markdown table of the grid's runs found in the store, in the grid file's order: the
    label columns `row_label` (a subset of attack, defense, rate, seed; seed lists the seeds of
    a row over several), the attack columns, tuning seconds and, for the rows of a data-side
    defense, the detection columns. A note instead when the store holds no run of the grid."""
    unknown = [label for label in row_label if label not in LABELS]
    if unknown:
        raise ValueError(f"row_label: unknown column(s) {unknown}; known: {list(LABELS)}")
    groups = stored_settings(grid_runs(spec), store)
    if not groups:
        return f"No run of grid {spec.name!r} is in the result store {store.root} yet."
    rows = []
    for (attack, defense, rate), found in groups.items():
        labels = {"attack": attack, "defense": defense, "rate": f"{rate:g}" if rate is not None else "-",
                  "seed": ", ".join(str(run.seed) for run, _ in found)}
        metrics = [r["metrics"] for _, r in found]
        rows.append({**{key: labels[key] for key in row_label}, **run_columns(metrics, with_tuning=True, with_detection=True)})
    table = markdown_table(rows)
    if any(len(found) > 1 for found in groups.values()):
        table += f"\n\n{SEVERAL_SEEDS_NOTE}"
    return table


def render_grid_table(spec: GridSpec, store: ResultStore, out: str | Path, command: str,
                      row_label: Sequence[str] = LABELS) -> Path:
    """Write the grid's table to `out` (atomically), under a comment naming `command`, the
    command that redoes it."""
    return write_rendered(out, grid_table(spec, store, row_label), command)


def write_rendered(out: str | Path, table: str, command: str) -> Path:
    """Write `table` to `out` (atomically) under a comment naming `command`, the command that redoes it."""
    text = f"<!-- Rendered from the result store by `{command}`; do not edit. -->\n\n{table}\n"
    return write_atomic(Path(out), text)
