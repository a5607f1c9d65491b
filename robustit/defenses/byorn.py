"""BYORn: bootstrap your own responses (DESIGN.md section 5.3, seed 003's abstract).

Poisoned targets are implausible answers to their images and instructions, so BYORn scores
every training response under the starting model, flags the implausible ones and trains them
on the model's own responses instead, so the trigger no longer maps to the target.

Detection runs once, before the first step (`curate` at step 0), with the starting model
frozen (eval mode, no gradients, the loop's frozen-feature cache, batches of the training
batch size):

- `score` (default "image_support"; "nll" is the paper's; "image_gain", "contrast",
  "contrast_support" and "agreement") gives each training sample a suspicion score s_i
  (formulas in `robustit.defenses.plausibility`);
- `threshold` flags samples from the scores alone (formulas in
  `robustit.defenses.thresholds`): "mixture" (default) flags the higher-mean component of a
  two-Gaussian EM fit, and nothing where BIC prefers one Gaussian; "robust_z" flags s_i more
  than `z` (3.5) robust standard deviations above the median, (s_i - median) / (1.4826 MAD) >
  z; "quantile" flags the top `quantile` share (0.4, the paper's 40%). `quantile` is read
  only by "quantile", `z` only by "robust_z". None of them knows the poison rate.

What a flagged sample trains on (`replace`):

- "ema" (default): the greedy response (up to `max_new_tokens` tokens) of an exponential
  moving average of the tuned weights, θ̄ <- d θ̄ + (1 - d) θ after every step with
  d = `ema_decay` (`robustit.defenses.ema`; θ̄ = the starting weights at step 0, so the first
  replacements are the starting model's), generated again with θ̄ swapped into the model every
  `refresh_every` steps (0: once per epoch of the loop), except after the last step;
- "base": the starting model's greedy response, generated once;
- "drop": nothing: the sample is left out of the LM loss (`training_sample` returns None).

With score "agreement" the starting model's greedy responses exist already and serve as the
first replacements. Unflagged samples train on their own responses. Every pass BYORn makes
(scoring forwards, generations) is counted in `extra_forward_passes` in the loop's unit
(passes of a batch through the whole model; a generation counts its prefill and each decode
step). `flags()` gives every training sample's score, flag, replacement and reason; the
loop writes them to the run directory (flags.jsonl). BYORn has no test-time part.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseConfig, Flag, TuningState, register_defense
from robustit.defenses.ema import ExponentialMovingAverage
from robustit.defenses.plausibility import SCORES, ScoredResponses, batches, frozen, greedy_responses, score_responses
from robustit.defenses.thresholds import Decision, mixture, robust_z, top_share
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.params import check_choice, check_int, check_number

THRESHOLDS = ("robust_z", "quantile", "mixture")
REPLACEMENTS = ("ema", "base", "drop")


@register_defense
class BYORn(Defense):
    name = "byorn"
    defaults = {
        "score": "image_support",
        "threshold": "mixture",
        "z": 3.5,
        "quantile": 0.4,
        "replace": "ema",
        "ema_decay": 0.99,
        "refresh_every": 0,
        "max_new_tokens": 24,
    }

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        p = self.params
        self.score: str = check_choice(self.label, "score", p["score"], SCORES)
        self.threshold: str = check_choice(self.label, "threshold", p["threshold"], THRESHOLDS)
        self.z = check_number(self.label, "z", p["z"], 0.0, math.inf)
        self.quantile = check_number(self.label, "quantile", p["quantile"], 0.0, 1.0)
        self.replace: str = check_choice(self.label, "replace", p["replace"], REPLACEMENTS)
        self.ema_decay = check_number(self.label, "ema_decay", p["ema_decay"], 0.0, 1.0)
        self.refresh_every = check_int(self.label, "refresh_every", p["refresh_every"], 0)
        self.max_new_tokens = check_int(self.label, "max_new_tokens", p["max_new_tokens"], 1)
        self.dataset: tuple[Sample, ...] = ()
        self.index: dict[str, int] = {}
        self.scores: np.ndarray | None = None
        self.decision: Decision | None = None
        self.replacements: dict[int, str] = {}
        self.treatment: str | None = None
        self.ema: ExponentialMovingAverage | None = None

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        """Keep the stripped training set, indexed by sample id (ids must be unique)."""
        self.dataset = tuple(dataset)
        self.index = {}
        for i, sample in enumerate(self.dataset):
            if sample.id in self.index:
                raise ValueError(f"{self.label} keys its flags by sample id; id {sample.id!r} occurs twice")
            self.index[sample.id] = i
        self.scores, self.decision, self.replacements, self.treatment, self.ema = None, None, {}, None, None

    def detect(self, model: VisionLanguageModel, features: FeatureCache, batch_size: int, progress: bool = True) -> ScoredResponses:
        """Score the prepared samples under `model` and flag them (the stand-alone detector of
        `robustit scan`); returns the scoring pass."""
        scored = score_responses(model, self.dataset, features, self.score, batch_size, self.max_new_tokens, progress)
        self.extra_forward_passes += scored.passes
        self.scores = scored.scores
        self.decision = self.decide(scored.scores, self.threshold)
        return scored

    def decide(self, scores: np.ndarray, threshold: str) -> Decision:
        """The flags of rule `threshold` (one of `THRESHOLDS`) on `scores`, with this defense's `z` and `quantile`."""
        if threshold == "robust_z":
            return robust_z(scores, self.z)
        if threshold == "quantile":
            return top_share(scores, self.quantile)
        if threshold == "mixture":
            return mixture(scores)
        raise ValueError(f"unknown threshold rule {threshold!r}; known: {list(THRESHOLDS)}")

    def flagged_indices(self) -> list[int]:
        return [] if self.decision is None else np.flatnonzero(self.decision.flagged).tolist()

    def generate(self, state: TuningState, indices: list[int]) -> dict[int, str]:
        """The model's greedy responses for the samples at `indices`, counted in the passes."""
        out: dict[int, str] = {}
        with frozen(state.model):
            for batch in batches(indices, state.batch_size, "byorn replacements", state.progress):
                texts, passes = greedy_responses(state.model, state.features, [self.dataset[i] for i in batch], self.max_new_tokens)
                self.extra_forward_passes += passes
                out.update(zip(batch, texts))
        return out

    def curate(self, state: TuningState) -> None:
        if state.step == 0:
            scored = self.detect(state.model, state.features, state.batch_size, state.progress)
            flagged = self.flagged_indices()
            if self.replace == "drop":
                self.treatment = "left out of the LM loss"
                return
            if scored.greedy is not None:
                self.replacements = {i: scored.greedy[i] for i in flagged}
            else:
                self.replacements = self.generate(state, flagged)
            self.treatment = "trains on the starting model's greedy response"
            if self.replace == "ema" and flagged:
                self.ema = ExponentialMovingAverage(state.model, self.ema_decay)
            return
        if self.ema is None:
            return
        self.ema.update()
        period = self.refresh_every or state.steps_per_epoch
        if state.step % period == 0 and state.step < state.total_steps:
            with self.ema.swapped_in():
                self.replacements = self.generate(state, self.flagged_indices())
            self.treatment = f"trains on the greedy response of the EMA weights at step {state.step}"

    def training_sample(self, sample: Sample) -> Sample | None:
        if self.decision is None:
            raise RuntimeError(f"{self.label}: curate at step 0 must flag the training set before samples are drawn")
        if sample.id not in self.index:
            raise ValueError(f"{self.label}: sample {sample.id!r} is not in the training set it scored")
        i = self.index[sample.id]
        if not self.decision.flagged[i]:
            return sample
        if self.replace == "drop":
            return None
        return sample.replace(response=self.replacements[i], references=[self.replacements[i]])

    def flags(self) -> list[Flag]:
        if self.decision is None or self.scores is None:
            return []
        out = []
        for i, sample in enumerate(self.dataset):
            flagged = bool(self.decision.flagged[i])
            reason = f"{self.score} {self.scores[i]:.4g}: {self.decision.reasons[i]}"
            if flagged and self.treatment is not None:
                reason += f"; {self.treatment}"
            out.append(Flag(sample.id, float(self.scores[i]), flagged, self.replacements.get(i), reason))
        return out

    def training_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {**super().training_state(), "treatment": self.treatment,
                                 "replacements": {str(i): text for i, text in self.replacements.items()}}
        if self.scores is not None and self.decision is not None:
            state.update(scores=torch.from_numpy(self.scores), flagged=torch.from_numpy(self.decision.flagged),
                         reasons=self.decision.reasons)
        if self.ema is not None:
            state.update({f"ema.{i}": shadow for i, shadow in enumerate(self.ema.shadow)})
        return state

    def load_training_state(self, state: dict[str, Any], model: VisionLanguageModel) -> None:
        super().load_training_state(state, model)
        self.treatment = state["treatment"]
        self.replacements = {int(i): text for i, text in state["replacements"].items()}
        if "scores" in state:
            self.scores = state["scores"].numpy()
            self.decision = Decision(state["flagged"].numpy(), list(state["reasons"]))
        shadows = sorted((int(key.split(".")[1]), value) for key, value in state.items() if key.startswith("ema."))
        if shadows:
            self.ema = ExponentialMovingAverage(model, self.ema_decay)
            for shadow, (_, saved) in zip(self.ema.shadow, shadows, strict=True):
                shadow.copy_(saved)
