"""`robustit scan`: BYORn's detector alone, as an audit of a training set before tuning
(DESIGN.md section 5.3).

The config's `Experiment` assembles the parts: the training split of its data source
(StampCaps, Karpathy JSON, ...), poisoned by its attack where it names one (to benchmark the
detector) or as it is with `attack: null`, and the starting model. Its defense, byorn with
its settings, scores and flags every sample as it would before tuning (`BYORn.detect`), from
stripped samples, in batches of `eval.batch_size`. Written to the output folder (a
`RunDirectory`; a folder holding anything but an earlier scan is refused):

    config.yaml      the config
    manifest.json    the attack's record, where one poisoned the set
    flags.jsonl      every sample's score, flag and reason, in data order
    ranking.csv      rank, id, score, flagged, poisoned (with a manifest), reason, instruction,
                     response: most suspicious first
    scores.png       the histogram of the scores, poisoned and clean apart with a manifest
    metrics.json     the detector and its passes, the counts and, against the manifest,
                     precision, recall and AUROC (`robustit.eval.detection`); under
                     `thresholds`, the same for the flags every threshold rule of byorn
                     would give on these scores; stage timings
"""
from __future__ import annotations

from typing import Any, Sequence

from robustit.attacks.dataset import PoisonedDataset
from robustit.config import ExperimentConfig
from robustit.data.sample import Sample
from robustit.defenses.base import Flag, stripped_dataset
from robustit.defenses.byorn import THRESHOLDS, BYORn
from robustit.eval.detection import detection_metrics, detection_of
from robustit.eval.score_figure import score_histogram
from robustit.experiment import Experiment
from robustit.rundir import RunDirectory


def ranking(samples: Sequence[Sample], flags: Sequence[Flag], poisoned: Sequence[bool] | None) -> list[dict[str, Any]]:
    """One row per sample, highest score first (ties in data order)."""
    rows = []
    for rank, i in enumerate(sorted(range(len(flags)), key=lambda i: -flags[i].score), 1):
        row: dict[str, Any] = {"rank": rank, "id": flags[i].id, "score": flags[i].score, "flagged": flags[i].flagged}
        if poisoned is not None:
            row["poisoned"] = poisoned[i]
        row.update(reason=flags[i].reason, instruction=samples[i].instruction, response=samples[i].response)
        rows.append(row)
    return rows


def threshold_comparison(detector: BYORn, poisoned_ids: set[str] | None) -> dict[str, dict[str, Any]]:
    """Per threshold rule, the detection metrics of the flags it gives on the detector's scores."""
    assert detector.scores is not None
    out = {}
    for rule in THRESHOLDS:
        flagged = detector.decide(detector.scores, rule).flagged
        flags = [Flag(s.id, float(score), bool(f), None, "") for s, score, f in zip(detector.dataset, detector.scores, flagged)]
        out[rule] = detection_metrics(flags, poisoned_ids)
    return out


def scan(config: ExperimentConfig, out: RunDirectory, progress: bool = True) -> dict[str, Any]:
    """Scan the config's training set into `out`; returns the metrics it wrote."""
    experiment = Experiment(config, progress)
    detector = experiment.defense
    if not isinstance(detector, BYORn):
        named = config.defense.name if config.defense is not None else None
        raise ValueError(f"robustit scan runs byorn's detector; the config names defense {named!r}")
    if out.path.is_dir() and not out.is_scan():
        raise ValueError(f"{out.path} holds files of something other than a scan; name a new folder with --out")
    with out.held():
        return _scan_into(experiment, detector, out, progress)


def _scan_into(experiment: Experiment, detector: BYORn, out: RunDirectory, progress: bool) -> dict[str, Any]:
    config = experiment.config
    dataset = experiment.poison()
    out.clear()
    out.save_config(config)
    if isinstance(dataset, PoisonedDataset):
        out.save_manifest(dataset.manifest())
    model = experiment.model
    detector.prepare(model, stripped_dataset(dataset))
    with experiment.stage("scan"):
        detector.detect(model, experiment.features, config.eval.batch_size, progress)
    flags = detector.flags()
    out.save_flags(flags)
    manifest = out.load_manifest()
    poisoned_ids = None if manifest is None else set(manifest["poisoned_ids"])
    poisoned = None if poisoned_ids is None else [f.id in poisoned_ids for f in flags]
    out.save_ranking(ranking(detector.dataset, flags, poisoned))
    title = (f"{config.name}: byorn {detector.score} scores of {len(flags)} samples, "
             f"{sum(f.flagged for f in flags)} flagged ({detector.threshold})")
    out.save_score_histogram(score_histogram([f.score for f in flags], [f.flagged for f in flags], poisoned, title))
    metrics = {
        "name": config.name,
        "detector": detector.describe(),
        "forward_passes": detector.extra_forward_passes,
        "detection": detection_of(out),
        "thresholds": threshold_comparison(detector, poisoned_ids),
        "data": {role: report.as_dict() for role, report in experiment.load_reports.items()},
        "timings": dict(experiment.timings),
    }
    out.save_metrics(metrics)
    return metrics
