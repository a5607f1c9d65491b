"""A run directory: the one owner of every path a run writes, with a typed save/load each.

    config.yaml                      the experiment config (`ExperimentConfig.to_dict`)
    manifest.json                    the attack's record: poisoned ids, trigger hash
    inputs.json                      hashes that identify the run's inputs (LM, base adapter, data)
    trigger/                         fitted trigger files (VLTrojan's patch)
    checkpoint/                      the tuned model: trainable weights, defense state (`robustit.checkpoint`)
    checkpoint-<step>/               intermediate checkpoints (train.checkpoint_every), each with
                                     what resuming needs; the last two are kept
    flags.jsonl                      a data-side defense's decision per training sample (`Flag`)
    audit.json                       which modules train; frozen tensors that got a gradient
    losses.json, loss_terms.json     LM loss and each defense term per step
    train.json                       the tuning's cost figures; written after the final
                                     checkpoint, it marks the tuning finished
    predictions/<condition>.jsonl    one record per test sample (base_clean, clean, full, ...)
    metrics.json                     written last: its presence marks the run complete
    report.md                        rendered from the files above
    ranking.csv, scores.png          `robustit scan`: samples most suspicious first, score histogram
    reevaluated/<slug>/              re-evaluations, each a run directory of its own
    run.lock                         held while a process writes the run (`robustit.lock`)

Every file is written to a temporary name in the same folder and renamed into place
(`robustit.atomic`), so a killed run never leaves a truncated file behind, and a failed write
names its path and leaves the earlier file as it was. A run claims its folder first
(`claimed`): a folder holding another config's run, files that are no run, or a live run is
refused, so two runs never share one.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import yaml

from robustit.atomic import remove_temporaries, write_atomic
from robustit.checkpoint import checkpoint_problem, read_checkpoint, write_checkpoint
from robustit.defenses.base import Flag
from robustit.lock import locked

if TYPE_CHECKING:
    from robustit.config import ExperimentConfig
    from robustit.defenses.base import Defense
    from robustit.models.base import VisionLanguageModel

log = logging.getLogger(__name__)
CONDITIONS = ("base_clean", "clean", "full", "image_only", "text_only")
KEPT_ON_CLEAR = ("reevaluated", "run.lock")
SCAN_FILES = ("config.yaml", "manifest.json", "flags.jsonl", "ranking.csv", "scores.png", "metrics.json")
INTERMEDIATE = re.compile(r"checkpoint-(\d+)")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


class RunDirectory:
    """The files of one run under `path` (see the module docstring for the layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def clear(self) -> None:
        """Remove what an earlier run left here (everything but re-evaluations and the lock),
        so that a rerun never mixes with it and is not complete before its metrics are written."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if entry.name in KEPT_ON_CLEAR:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @contextmanager
    def claimed(self, config: ExperimentConfig, resume: bool = False, replace: bool = False) -> Iterator[None]:
        """Hold this folder for a run of `config` for the block (run.lock): refused while
        another live process holds it, when it holds the run of a config with another hash
        (the error names the settings that differ; with `replace` that run is cleared
        instead) and when it holds files but no run. Without `resume` it is cleared first;
        with it, what an earlier, killed attempt of the same config wrote stays, but for the
        temporaries of unfinished writes."""
        with self.held():
            if self._held_by(config, replace) and resume:
                remove_temporaries(self.path)
            else:
                self.clear()
            yield

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the folder's run.lock for the block (refused while another live process holds it)."""
        with locked(self.path / "run.lock"):
            yield

    def _held_by(self, config: ExperimentConfig, replace: bool) -> bool:
        """Whether the folder is empty or holds a run of `config`; False for another
        config's run under `replace`, an error for it otherwise and for files of no run."""
        from robustit.config import changed_keys, value_at

        entries = [e for e in self.path.iterdir() if e.name not in KEPT_ON_CLEAR and not e.name.startswith(".")]
        if not entries:
            return True
        hint = f"give this run a folder of its own (--set name=... or --set output_dir=...) or delete {self.path}"
        if not (self.path / "config.yaml").is_file():
            raise ValueError(f"{self.path} holds files that are not a robustit run ({entries[0].name}, ...); {hint}")
        try:
            saved = self.load_config()
        except ValueError as error:
            raise ValueError(f"{self.path} holds a run whose config.yaml does not load ({error}); {hint}") from None
        if saved.config_hash() == config.config_hash():
            return True
        if replace:
            return False
        there, here = saved.outcome(), config.outcome()
        differences = "; ".join(f"{key}: {value_at(there, key)!r} there, {value_at(here, key)!r} here"
                                for key in changed_keys(there, here)[:5])
        raise ValueError(f"{self.path} holds the run of another config (name {saved.name!r}; {differences}) "
                         f"than this one (name {config.name!r}); {hint}")

    def is_complete(self) -> bool:
        """Whether the run finished (metrics.json is written last)."""
        return (self.path / "metrics.json").is_file()

    def _read_json(self, name: str, *missing: Any) -> Any:
        """The JSON file `name`; if it is absent, `missing[0]` where given, else an error."""
        path = self.path / name
        if not path.is_file() and missing:
            return missing[0]
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} holds no {name}: is it a finished robustit run?") from None

    def save_config(self, config: ExperimentConfig) -> Path:
        return write_atomic(self.path / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    def load_config(self, overrides: Iterable[str] = ()) -> ExperimentConfig:
        """The saved config read over today's defaults, `overrides` applied."""
        from robustit.config import load_config

        path = self.path / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} holds no config.yaml: is it a robustit run directory?")
        return load_config(path, list(overrides))

    def save_manifest(self, manifest: dict[str, Any]) -> Path:
        return write_atomic(self.path / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def load_manifest(self) -> dict[str, Any] | None:
        return self._read_json("manifest.json", None)

    def save_inputs(self, inputs: dict[str, str | None]) -> Path:
        return write_atomic(self.path / "inputs.json", _json(inputs))

    def load_inputs(self) -> dict[str, str | None]:
        return self._read_json("inputs.json", {})

    @property
    def trigger_dir(self) -> Path:
        return self.path / "trigger"

    def checkpoint_dir(self, step: int | None = None) -> Path:
        """checkpoint/ (the final weights) or checkpoint-<step>/."""
        return self.path / ("checkpoint" if step is None else f"checkpoint-{step}")

    def save_checkpoint(
        self, model: VisionLanguageModel, defense: Defense | None, step: int | None = None,
        training: dict[str, Any] | None = None,
    ) -> Path:
        """The trainable weights, the defense's state where it keeps any and `training`
        (what resuming needs), written whole or not at all (`robustit.checkpoint`)."""
        return write_checkpoint(self.checkpoint_dir(step), model, defense, step, training)

    def load_checkpoint(self, model: VisionLanguageModel, defense: Defense | None = None, step: int | None = None) -> dict[str, Any]:
        """The trainable weights of checkpoint/ (or checkpoint-<step>/) into `model` and the
        defense state into `defense`; returns the training state it holds ({} if none)."""
        directory = self.checkpoint_dir(step)
        if not (directory / "trainable.safetensors").is_file():
            raise FileNotFoundError(f"{self.path} holds no {directory.name}/trainable.safetensors")
        return read_checkpoint(directory, model, defense)

    def checkpoint_steps(self) -> list[int]:
        """The steps of the intermediate checkpoints here, ascending."""
        if not self.path.is_dir():
            return []
        return sorted(int(match[1]) for entry in self.path.iterdir() if (match := INTERMEDIATE.fullmatch(entry.name)))

    def latest_checkpoint(self) -> int | None:
        """The step of the last intermediate checkpoint that is whole; damaged ones after it
        are logged and passed over."""
        for step in reversed(self.checkpoint_steps()):
            problem = checkpoint_problem(self.checkpoint_dir(step))
            if problem is None:
                return step
            log.warning("%s is damaged (%s); trying the checkpoint before it", self.checkpoint_dir(step), problem)
        return None

    def prune_checkpoints(self, keep: int) -> None:
        """Remove all but the last `keep` intermediate checkpoints (none when keep is 0)."""
        steps = self.checkpoint_steps()
        for step in steps[: max(0, len(steps) - keep)] if keep else []:
            shutil.rmtree(self.checkpoint_dir(step))

    def load_audit(self) -> dict[str, Any] | None:
        return self._read_json("audit.json", None)

    def save_train_result(self, result: dict[str, Any]) -> None:
        """A tuning's `TrainResult.as_dict()`: audit.json, losses.json, loss_terms.json (with
        defense terms), then the rest as train.json, which marks the tuning finished."""
        rest = {key: value for key, value in result.items() if key not in ("audit", "losses", "loss_terms")}
        write_atomic(self.path / "audit.json", _json(result["audit"]))
        write_atomic(self.path / "losses.json", json.dumps(result["losses"]) + "\n")
        if result["loss_terms"]:
            write_atomic(self.path / "loss_terms.json", json.dumps(result["loss_terms"]) + "\n")
        write_atomic(self.path / "train.json", _json(rest))

    def load_train_result(self) -> dict[str, Any]:
        """What `save_train_result` wrote, as one dict."""
        losses, loss_terms = self.load_losses()
        return {**self._read_json("train.json"), "audit": self._read_json("audit.json"), "losses": losses,
                "loss_terms": loss_terms}

    def tuning_finished(self) -> bool:
        """Whether the tuning finished here: train.json written and the final checkpoint whole."""
        return (self.path / "train.json").is_file() and checkpoint_problem(self.checkpoint_dir()) is None

    def save_flags(self, flags: Sequence[Flag]) -> Path:
        """flags.jsonl, one flag per line (id, score, flagged, replaced_response, reason)."""
        return write_atomic(self.path / "flags.jsonl", "".join(json.dumps(asdict(f), ensure_ascii=False) + "\n" for f in flags))

    def load_flags(self) -> list[Flag]:
        """The flags of flags.jsonl ([] if the run has none)."""
        path = self.path / "flags.jsonl"
        if not path.is_file():
            return []
        flags = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                flags.append(Flag(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{path} line {number}: not a flag record ({error})") from None
        return flags

    @property
    def ranking_file(self) -> Path:
        return self.path / "ranking.csv"

    @property
    def score_histogram_file(self) -> Path:
        return self.path / "scores.png"

    def save_ranking(self, rows: Sequence[dict[str, Any]]) -> Path:
        """ranking.csv: one row per sample, the columns of the first row."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return write_atomic(self.ranking_file, text.getvalue())

    def load_ranking(self) -> list[dict[str, str]]:
        with self.ranking_file.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def is_scan(self) -> bool:
        """Whether the folder holds a `robustit scan`, finished or killed: nothing but the files a
        scan writes (`SCAN_FILES`), and metrics.json only beside the ranking.csv a scan writes
        before it."""
        names = {e.name for e in self.path.iterdir() if e.name not in KEPT_ON_CLEAR and not e.name.startswith(".")}
        return names <= set(SCAN_FILES) and ("metrics.json" not in names or self.ranking_file.name in names)

    def save_score_histogram(self, png: bytes) -> Path:
        return write_atomic(self.score_histogram_file, png)

    def load_losses(self) -> tuple[list[float], dict[str, list[float]]]:
        return self._read_json("losses.json"), self._read_json("loss_terms.json", {})

    def save_predictions(self, records: dict[str, list[dict[str, Any]]]) -> None:
        """predictions/<condition>.jsonl, one record per line."""
        for condition, rows in records.items():
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            write_atomic(self.path / "predictions" / f"{condition}.jsonl", text)

    def load_predictions(self, condition: str, n: int | None = None) -> list[dict[str, Any]]:
        """The first `n` (all if None) prediction records of `condition` ([] if the run has none)."""
        path = self.path / "predictions" / f"{condition}.jsonl"
        if not path.is_file():
            return []
        with path.open() as handle:
            return [json.loads(line) for i, line in enumerate(handle) if n is None or i < n]

    def save_metrics(self, metrics: dict[str, Any]) -> Path:
        return write_atomic(self.path / "metrics.json", _json(metrics))

    def load_metrics(self) -> dict[str, Any]:
        return self._read_json("metrics.json")

    def write_report(self) -> Path:
        from robustit.report import render_report

        return write_atomic(self.path / "report.md", render_report(self))

    def reevaluation(self, slug: str) -> RunDirectory:
        """The run directory of a re-evaluation of this run named `slug`."""
        return RunDirectory(self.path / "reevaluated" / slug)
