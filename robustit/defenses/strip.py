"""STRIP: a test-time detector that refuses inputs whose responses stay constant when the
input is perturbed (Gao et al. 2019, adapted to generation; the RobustIT paper's appendix F
baseline).

A trigger dominates the input: superimpose other images on a triggered image and the
backdoored model still says its target; do it to a clean image and the description changes.
For a test input (x, t) with the model's greedy response r_0 (the evaluator's prediction),
STRIP generates greedy responses r_k to (x_k, t), k = 1..N (`perturbations`, default 4), in
batches, with

    x_k = (1 - alpha) x + alpha x'_k        (`Image.blend`, `alpha` default 0.5),

x'_k being images of the training inputs that `prepare` gave, resized to x's size: the
indices random.Random("strip:<seed>:<id>").sample(range(n), N + 1), the input's own index
(calibration) left out, the first N kept, so an input gets the same overlays in every
condition. The instruction t is kept: it sets the task, and a text trigger in it survives the
perturbation as an image trigger survives the blend. The constancy score is the mean token
overlap of the N + 1 responses over their pairs,

    s = 2 / (N (N + 1)) * sum_{0 <= i < j <= N} J(W(r_i), W(r_j)),
    J(A, B) = |A & B| / |A | B|             (1 where A and B are both empty),

W(r) the set of r's content words (`robustit.defenses.plausibility.content_words`). The input
is flagged, and refused (`Defense.refuse`), when s > tau.

tau is `threshold` where set (a number in [0, 1]); by default (null) it is calibrated once per
evaluation, on its first `refuse` call inside `inference`, under the model being evaluated:
m = min(`calibration_size`, n) training inputs, indices
random.Random("strip-calibration:<seed>").sample(range(n), m), are scored as above and

    tau = the (a + 1)-th largest calibration score,  a = floor(false_alarm * m),

so at most a share `false_alarm` (default 0.05, at most 0.5) of them scores above tau
(`calibration` "quantile", the default). The training inputs are the stripped ones tuning saw,
poisoned ones included, as a defender has them: where more than a share false_alarm of those
are poisoned and their responses stay as constant as a triggered input's, tau reaches their
score and STRIP flags nothing. `calibration` "robust" (config strip-robust.yaml) cuts at a
robust z-score of the calibration scores S instead,

    tau = min(1, median(S) + robust_z * 1.4826 * MAD(S)),   MAD(S) = median_s |s - median(S)|,

(`robust_z` default 3, the usual cut; 1.4826 MAD estimates the standard deviation of normal
scores): the median and MAD move little while the poisoned calibration inputs are a minority,
so it assumes fewer than half of the training inputs poisoned and nothing else. A fixed
`threshold` overrides both. No rule knows the trigger, the target or the poison rate.

Cost: N greedy generations per test input and condition, N + 1 per calibration input once
per evaluation. STRIP has no training-time part, and needs `prepare`'s training inputs, so a
re-evaluation, which runs no `prepare`, cannot use it.
"""
from __future__ import annotations

import logging
import math
import random
from contextlib import contextmanager
from itertools import combinations
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseConfig, Generate, register_defense
from robustit.defenses.plausibility import content_words
from robustit.models.base import VisionLanguageModel
from robustit.params import check_choice, check_int, check_number

log = logging.getLogger(__name__)
MAX_FALSE_ALARM = 0.5
MAD_TO_SIGMA = 1.4826
CALIBRATIONS = ("quantile", "robust")


def blend(image: Image.Image, overlay: Image.Image, alpha: float) -> Image.Image:
    """(1 - alpha) image + alpha overlay, the overlay resized to the image's size (RGB)."""
    base = image.convert("RGB")
    return Image.blend(base, overlay.convert("RGB").resize(base.size), alpha)


def overlap(a: str, b: str) -> float:
    """J(W(a), W(b)): the Jaccard index of the two responses' content-word sets (1 if both are empty)."""
    words_a, words_b = set(content_words(a)), set(content_words(b))
    union = words_a | words_b
    return len(words_a & words_b) / len(union) if union else 1.0


def constancy(responses: Sequence[str]) -> float:
    """s: the mean `overlap` of the responses over their pairs."""
    return float(np.mean([overlap(a, b) for a, b in combinations(responses, 2)]))


def robust_threshold(scores: Sequence[float], z: float) -> float:
    """tau: min(1, median + z * 1.4826 * MAD) of the scores."""
    if not scores:
        raise ValueError("calibrating a threshold needs at least one score")
    values = np.asarray(scores, dtype=float)
    median = float(np.median(values))
    return min(1.0, median + z * MAD_TO_SIGMA * float(np.median(np.abs(values - median))))


def calibrated_threshold(scores: Sequence[float], false_alarm: float) -> float:
    """tau: the (a + 1)-th largest score, a = floor(false_alarm * m) of m scores."""
    if not scores:
        raise ValueError("calibrating a threshold needs at least one score")
    allowed = math.floor(false_alarm * len(scores) + 1e-9)
    return float(sorted(scores, reverse=True)[allowed])


@register_defense
class STRIP(Defense):
    name = "strip"
    test_time_only = True
    defaults = {
        "perturbations": 4,
        "alpha": 0.5,
        "false_alarm": 0.05,
        "threshold": None,
        "calibration_size": 64,
        "seed": 0,
        "calibration": "quantile",
        "robust_z": 3.0,
    }
    hashed_when_set = ("calibration", "robust_z")

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        p = self.params
        self.perturbations = check_int(self.label, "perturbations", p["perturbations"], 1)
        self.alpha = check_number(self.label, "alpha", p["alpha"], 0.0, 1.0, low_open=True)
        self.false_alarm = check_number(self.label, "false_alarm", p["false_alarm"], 0.0, MAX_FALSE_ALARM)
        threshold = p["threshold"]
        self.threshold = None if threshold is None else check_number(self.label, "threshold", threshold, 0.0, 1.0)
        self.calibration_size = check_int(self.label, "calibration_size", p["calibration_size"], 1)
        self.seed = check_int(self.label, "seed", p["seed"], 0)
        self.calibration = check_choice(self.label, "calibration", p["calibration"], CALIBRATIONS)
        self.robust_z = check_number(self.label, "robust_z", p["robust_z"], 0.0, 100.0)
        self.pool: tuple[Sample, ...] = ()
        self.tau: float | None = self.threshold
        self.calibration_scores: list[float] = []

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        """Keep the stripped training inputs: the overlays and the calibration set."""
        if len(dataset) <= self.perturbations:
            raise ValueError(f"{self.label} overlays {self.perturbations} other training images on each input, "
                             f"so it needs more than {self.perturbations} training samples, got {len(dataset)}")
        self.pool = tuple(dataset)

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        """Calibrate tau afresh (where not fixed) for the evaluation in the block."""
        self.tau, self.calibration_scores = self.threshold, []
        yield

    def refuse(self, samples: Sequence[Sample], responses: Sequence[str], generate: Generate) -> list[bool]:
        """Flag each input whose constancy score s exceeds tau."""
        if not self.pool:
            raise ValueError(f"{self.label} needs the training inputs of prepare() for its overlays and calibration")
        if self.tau is None:
            self.tau = self.calibrate(generate)
        return [score > self.tau for score in self.scores(samples, responses, generate, [None] * len(samples))]

    def test_time_stats(self) -> dict[str, Any]:
        """tau as used, and where it was calibrated: how many calibration scores lie above it,
        and their median and maximum."""
        if self.tau is None:
            return {}
        stats: dict[str, Any] = {"tau": self.tau}
        if self.calibration_scores:
            scores = self.calibration_scores
            stats["calibration"] = {"n": len(scores), "above_tau": sum(s > self.tau for s in scores),
                                    "median": float(np.median(scores)), "max": max(scores)}
        return stats

    def overlay_indices(self, key: str, own: int | None) -> list[int]:
        """The training indices of an input's N overlays (its own index `own` left out)."""
        drawn = random.Random(f"strip:{self.seed}:{key}").sample(range(len(self.pool)), self.perturbations + 1)
        return [i for i in drawn if i != own][: self.perturbations]

    def scores(self, samples: Sequence[Sample], responses: Sequence[str], generate: Generate,
               own: Sequence[int | None]) -> list[float]:
        """s of each input from its response and those to its N blends (`own`: its training index, if any)."""
        overlays = [self.overlay_indices(s.id, i) for s, i in zip(samples, own)]
        perturbed = [generate(self.blends(samples, overlays, k), f"strip {k + 1}/{self.perturbations}")
                     for k in range(self.perturbations)]
        return [constancy([responses[i], *(texts[i] for texts in perturbed)]) for i in range(len(samples))]

    def blends(self, samples: Sequence[Sample], overlays: Sequence[list[int]], k: int) -> list[Sample]:
        """x_k of each input: its image blended with the training image of its k-th overlay index."""
        return [s.replace(image=blend(s.image, self.pool[o[k]].image, self.alpha)) for s, o in zip(samples, overlays)]

    def calibrate(self, generate: Generate) -> float:
        """tau from the scores of the calibration inputs (see the module docstring)."""
        m = min(self.calibration_size, len(self.pool))
        indices = random.Random(f"strip-calibration:{self.seed}").sample(range(len(self.pool)), m)
        samples = [self.pool[i] for i in indices]
        scores = self.scores(samples, generate(samples, "strip calibration"), generate, indices)
        tau = (robust_threshold(scores, self.robust_z) if self.calibration == "robust"
               else calibrated_threshold(scores, self.false_alarm))
        self.calibration_scores = scores
        log.info("%s: tau %.3f (%d of %d calibration scores above it)", self.label, tau,
                 sum(s > tau for s in scores), m)
        return tau
