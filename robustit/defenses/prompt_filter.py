"""Prompt filtering at inference (RobustIT paper appendix F baseline): drop suspicious words
from each test instruction before generation, without knowing the trigger, the target or the
poison rate (except `blacklist`, the oracle).

A word is a maximal run of non-space characters of the instruction; its key, for matching and
counting, is its lowercased letters and digits (`plausibility.WORD`), or the lowercased word
itself where it has none ("Briefly." and "briefly" share the key "briefly"). Removing words
keeps the whitespace after each word that stays (a newline after a question stays a newline),
and an instruction is never emptied (nothing is removed where every word would be). `method`
picks the rule:

- "influence" (default): with x the image and t the instruction of n words, r is the model's
  greedy response to (x, t) (up to `max_new_tokens` tokens) and, for every contiguous span
  s = w_i..w_j of at most `max_span` words (all but the whole of t),

      delta_s = NLL(r | x, t without s) - NLL(r | x, t)

  in nats, NLL being the mean over r's tokens, end token included (`LMOutput.sample_loss`):
  the mean, not the max, so that one token that turns on a word (an end token after
  "briefly") does not decide alone. A span is suspicious when delta_s > `margin`; the words of
  every minimal suspicious span (one with no suspicious span inside it) are removed. So a word
  whose removal alone costs r more than the margin goes alone, neighbours that each do go both,
  and a trigger of several words each of which stands in for the others (removing one leaves
  the backdoor on) goes as the shortest span whose removal turns it off. It can only catch a
  text trigger the backdoor needs: where the image trigger alone keeps r likely, no removal
  moves it.
  Default margin 1.0 nat per token (removing the span makes r e times less likely per token):
  a round bound above every clean value measured, chosen on clean inputs only. Over 140 clean
  held-out StampCaps test inputs under two tuned mini models (the IDR-tuned TrojVQA run of
  runs/robustit-repaired, 80 inputs, and an IDR-tuned BadNets probe of
  runs/robustit-repair-probe, 60), the largest delta of any span of an input had median 0.09
  and 0.14 and maximum 0.29 and 0.69 ("What is" in "What is in this photo? Answer in one
  sentence."); single words at most 0.23 and 0.54. Both models were tuned with IDR's
  instruction augmentations, so a VanillaIT model may be more sensitive to its instruction,
  and VQA instructions were not measured.
  Cost, in passes of a batch through the whole model, over the inputs of one call of
  `filter_inputs` (a condition's test inputs): the greedy generations in batches of
  `batch_size`, 1 + min(L, max_new_tokens) passes each (L the longest r of the batch), and
  ceil(sum_i (1 + m_i) / `batch_size`) scoring forwards for every t_i and its m_i =
  sum_{k=1..K} (n_i - k + 1) span removals, K = min(`max_span`, n_i), the whole-instruction
  span left out (about 25 variants for a 10-word instruction at the defaults: K = 3, batch 32).
- "rarity": words whose key occurs in fewer than a `min_frequency` share of the training
  instructions (from `prepare`, each instruction counted once per key) are dropped; no
  model pass. A naive baseline, expected to be weak: a trigger inserted into 10% of the
  training data is among the most frequent words there, so it is kept, while clean words
  rare in training (held-out phrasings, VQA questions) are dropped.
- "blacklist" (oracle, an upper bound, not a defense): drops every occurrence of each entry of
  `tokens`, a word or a phrase of several words matched as consecutive keys; no model pass.

Counts of what was filtered (inputs seen and modified, removed keys, passes) are kept in
`stats` and logged when the `inference` block ends.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseConfig, register_defense
from robustit.defenses.plausibility import WORD, batches, frozen, greedy_responses, token_nll
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.params import FieldError, check_choice, check_int, check_number

log = logging.getLogger(__name__)

METHODS = ("influence", "rarity", "blacklist")
WORD_SPAN = re.compile(r"\S+")
Span = tuple[int, int]


@dataclass
class FilterStats:
    """What the filter did over the test inputs it saw."""

    inputs: int = 0
    modified: int = 0
    passes: int = 0
    removed: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "modified": self.modified, "passes": self.passes,
                "removed": dict(self.removed.most_common())}


def word_key(word: str) -> str:
    """The lowercased letters and digits of `word`, or `word` lowercased where it has none."""
    return "".join(WORD.findall(word.lower())) or word.lower()


def words_of(text: str) -> list[str]:
    return WORD_SPAN.findall(text)


def without(text: str, removed: set[int]) -> str:
    """`text` without the words at the `removed` positions (not all of them): each kept word
    but the last keeps the whitespace that follows it in `text`, leading and trailing
    whitespace stay."""
    matches = list(WORD_SPAN.finditer(text))
    kept = [i for i in range(len(matches)) if i not in removed]
    if len(kept) == len(matches):
        return text
    if not kept:
        raise ValueError(f"removing every word of {text!r}")
    body = "".join(matches[i].group() + text[matches[i].end(): matches[i + 1].start()] for i in kept[:-1])
    return text[: matches[0].start()] + body + matches[kept[-1]].group() + text[matches[-1].end():]


def spans(n: int, max_span: int) -> list[Span]:
    """Every contiguous span [i, j) of 1..max_span of n words but the whole, shortest first."""
    return [(i, i + k) for k in range(1, min(max_span, n) + 1) for i in range(n - k + 1) if k < n]


def minimal_spans(suspicious: Sequence[Span]) -> list[Span]:
    """The spans of `suspicious` with no other span of it inside them."""
    return [(i, j) for i, j in suspicious
            if not any(i <= a and b <= j and (a, b) != (i, j) for a, b in suspicious)]


def influential_words(deltas: dict[Span, float], margin: float) -> set[int]:
    """The word positions of every minimal span whose delta exceeds `margin`."""
    chosen = minimal_spans([s for s, delta in deltas.items() if delta > margin])
    return {k for i, j in chosen for k in range(i, j)}


def phrase_positions(keys: Sequence[str], phrases: Sequence[Sequence[str]]) -> set[int]:
    """The positions of every occurrence of each phrase (a sequence of keys) in `keys`."""
    return {i + k for phrase in phrases for i in range(len(keys) - len(phrase) + 1)
            if list(keys[i: i + len(phrase)]) == list(phrase) for k in range(len(phrase))}


def instruction_frequencies(instructions: Sequence[str]) -> dict[str, float]:
    """Key -> the share of `instructions` in which it occurs."""
    counts = Counter(key for text in instructions for key in {word_key(w) for w in words_of(text)})
    return {key: count / len(instructions) for key, count in counts.items()}


@register_defense
class PromptFilter(Defense):
    name = "prompt-filter"
    test_time_only = True
    defaults = {"method": "influence", "margin": 1.0, "max_span": 3, "batch_size": 32, "max_new_tokens": 24,
                "min_frequency": 0.01, "tokens": []}

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        self.method: str = check_choice(self.label, "method", self.params["method"], METHODS)
        self.margin = check_number(self.label, "margin", self.params["margin"], 0.0, math.inf, low_open=True)
        self.max_span = check_int(self.label, "max_span", self.params["max_span"], 1)
        self.batch_size = check_int(self.label, "batch_size", self.params["batch_size"], 1)
        self.max_new_tokens = check_int(self.label, "max_new_tokens", self.params["max_new_tokens"], 1)
        self.min_frequency = check_number(self.label, "min_frequency", self.params["min_frequency"], 0.0, 1.0, low_open=True)
        self.phrases = self._check_tokens(self.params["tokens"])
        self.frequencies: dict[str, float] | None = None
        self.model: VisionLanguageModel | None = None
        self.features: FeatureCache | None = None
        self.stats = FilterStats()

    def _check_tokens(self, tokens: Any) -> list[list[str]]:
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise FieldError("tokens", f"must be a list of non-empty strings, got {tokens!r}", self.label)
        if self.method == "blacklist" and not tokens:
            raise FieldError("tokens", "must name at least one word for method 'blacklist'", self.label)
        if self.method != "blacklist" and tokens:
            raise FieldError("tokens", f"is read only by method 'blacklist', not {self.method!r}", self.label)
        return [[word_key(w) for w in words_of(t)] for t in tokens]

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        if self.method == "rarity":
            self.frequencies = instruction_frequencies([s.instruction for s in dataset])

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        if self.method == "rarity" and self.frequencies is None:
            raise ValueError(f"{self.label}: method 'rarity' needs the training instructions, given to prepare() "
                             "before tuning; it cannot filter a model whose tuning it did not see")
        self.model, self.features, self.stats = model, FeatureCache(model), FilterStats()
        try:
            yield
        finally:
            self.model = self.features = None
            log.info("%s (%s): %s", self.label, self.method, self.stats.as_dict())

    def test_time_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()

    def filter_input(self, sample: Sample) -> Sample:
        return self.filter_inputs([sample])[0]

    def filter_inputs(self, samples: Sequence[Sample]) -> list[Sample]:
        words = [words_of(sample.instruction) for sample in samples]
        if self.method == "influence":
            deltas = self.span_deltas(samples, [len(w) for w in words])
            removed = [influential_words(d, self.margin) for d in deltas]
        else:
            removed = [self.listed_words(w) for w in words]
        return [self._filtered(sample, w, r) for sample, w, r in zip(samples, words, removed)]

    def _filtered(self, sample: Sample, words: list[str], removed: set[int]) -> Sample:
        self.stats.inputs += 1
        if not removed or len(removed) == len(words):
            return sample
        self.stats.modified += 1
        self.stats.removed.update(word_key(words[i]) for i in sorted(removed))
        return sample.replace(instruction=without(sample.instruction, removed))

    def listed_words(self, words: list[str]) -> set[int]:
        """The positions of the words "blacklist" or "rarity" drops."""
        keys = [word_key(w) for w in words]
        if self.method == "blacklist":
            return phrase_positions(keys, self.phrases)
        return {i for i, key in enumerate(keys) if self.frequencies.get(key, 0.0) < self.min_frequency}

    def span_deltas(self, samples: Sequence[Sample], lengths: Sequence[int]) -> list[dict[Span, float]]:
        """delta_s of every span of each sample's instruction (of `lengths` words) under the
        test-time model: the greedy responses in batches of `batch_size`, then every variant
        of every instruction scored in batches of `batch_size`."""
        if self.model is None or self.features is None:
            raise RuntimeError(f"{self.label}: method 'influence' filters inputs only inside inference(model)")
        candidates = [spans(n, self.max_span) for n in lengths]
        scored = [i for i, c in enumerate(candidates) if c]
        deltas: list[dict[Span, float]] = [{} for _ in samples]
        if not scored:
            return deltas
        with frozen(self.model):
            responses: list[str] = []
            for chunk in batches([samples[i] for i in scored], self.batch_size, "prompt filter: responses",
                                 self.progress):
                texts, passes = greedy_responses(self.model, self.features, chunk, self.max_new_tokens)
                responses += texts
                self.stats.passes += passes
            variants = [samples[i].replace(instruction=t, response=response)
                        for i, response in zip(scored, responses)
                        for t in [samples[i].instruction] + [without(samples[i].instruction, set(range(a, b)))
                                                             for a, b in candidates[i]]]
            nll = self.response_nll(variants)
        start = 0
        for i in scored:
            own = nll[start: start + 1 + len(candidates[i])]
            deltas[i] = dict(zip(candidates[i], (own[1:] - own[0]).tolist()))
            start += len(own)
        return deltas

    def response_nll(self, variants: list[Sample]) -> np.ndarray:
        """NLL(response | image, instruction) of each variant (its mean token NLL), in batches."""
        nll = [float(tokens.mean()) for batch in batches(variants, self.batch_size, "prompt filter: span removals",
                                                           self.progress)
               for tokens in token_nll(self.model, self.features, [s.image for s in batch], batch)]
        self.stats.passes += math.ceil(len(variants) / self.batch_size)
        return np.array(nll)
