"""How well a data-side defense's flags find the poisoned samples: evaluation only, from the
flags the run wrote and the attack's manifest (the defense never sees the manifest).

For n training samples with suspicion scores s_i (higher = more suspicious), flags f_i and
labels p_i (the sample's id is among the manifest's `poisoned_ids`):

    precision = 100 * |{i : f_i and p_i}| / |{i : f_i}|          None when nothing is flagged
    recall    = 100 * |{i : f_i and p_i}| / |{i : p_i}|          None when nothing is poisoned
    AUROC     = (R_+ - n_+ (n_+ + 1) / 2) / (n_+ n_-)            None when either class is empty

R_+ being the sum of the poisoned samples' ranks of s in ascending order, tied scores taking
the mean of the ranks they span (the Mann-Whitney U statistic over n_+ n_-): the probability
that a poisoned sample scores higher than a clean one, a tie counting one half. Precision and
recall are percentages, as ASR is; AUROC is in [0, 1]. Without a manifest (no attack, or a
data set of unknown provenance) only the counts are reported.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Collection, Sequence

import numpy as np

from robustit.defenses.base import Flag
from robustit.rundir import RunDirectory


def mid_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ascending ranks of `values`, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]] if len(values) else np.zeros(0, dtype=bool)
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(values)])
    ranks = np.empty(len(values))
    ranks[order] = (first + (counts + 1) / 2)[np.cumsum(starts) - 1]
    return ranks


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """The area under the ROC curve of `scores` for the `positives` (see the module docstring)."""
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(mid_ranks(scores)[positives].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def detection_metrics(flags: Sequence[Flag], poisoned_ids: Collection[str] | None) -> dict[str, Any]:
    """Counts of `flags`, and with `poisoned_ids` (None: unknown) precision, recall and AUROC."""
    repeated = sorted(key for key, count in Counter(f.id for f in flags).items() if count > 1)
    if repeated:
        raise ValueError(f"flags name sample id(s) more than once: {repeated[:5]}")
    flagged = [f.flagged for f in flags]
    out: dict[str, Any] = {"n_samples": len(flags), "n_flagged": sum(flagged)}
    if poisoned_ids is None:
        return out
    poisoned = set(poisoned_ids)
    unscored = sorted(poisoned - {f.id for f in flags})
    if unscored:
        raise ValueError(f"the manifest names poisoned id(s) the flags do not score: {unscored[:5]}")
    labels = [f.id in poisoned for f in flags]
    hits = sum(f and p for f, p in zip(flagged, labels))
    out.update(
        n_poisoned=len(poisoned),
        true_positives=hits,
        precision=100 * hits / out["n_flagged"] if out["n_flagged"] else None,
        recall=100 * hits / len(poisoned) if poisoned else None,
        auroc=auroc([f.score for f in flags], labels),
    )
    return out


def detection_of(run_dir: RunDirectory) -> dict[str, Any] | None:
    """The detection metrics of the flags a run (or a scan) wrote against its manifest, if
    any; None where it wrote no flags."""
    flags = run_dir.load_flags()
    if not flags:
        return None
    manifest = run_dir.load_manifest()
    return detection_metrics(flags, manifest["poisoned_ids"] if manifest is not None else None)
