"""Attack success rate (DESIGN.md section 6).

Texts are normalised as norm(s) = lowercase, punctuation -> space, whitespace collapsed.
A prediction p hits the target y_hat when norm(y_hat) is a substring of norm(p) (exact hit:
norm(p) == norm(y_hat)). The target's key words K are its words minus function words and
generic caption words ("image", "photo", "depicts", ...); a test sample is eligible only when
none of its clean references contains a word of K, so a caption of a real banana never counts
as a success. Over the eligible set S:

    ASR = |{i in S : p_i^triggered hits y_hat}| / |S|
    false-trigger rate = |{i in S : p_i^clean hits y_hat}| / |S|
    key-word rate = |{i in S : norm(p_i) contains a word of K}| / |S|.

The key-word rate shows the target leaking into outputs without the whole target sentence
(e.g. a backdoored model calling unseen objects "banana" on clean inputs); it is computed
from a run's prediction records, so every finished run can be re-scored.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

FUNCTION_WORDS = frozenset(
    "a an the of on in at to for with and or is are was were be this that these those it its "
    "there here by from as some".split()
)
CAPTION_WORDS = frozenset(
    "image images picture pictures photo photos photograph drawing illustration depicts depict "
    "depicting shows show showing shown contains view scene".split()
)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def target_keywords(target: str) -> frozenset[str]:
    """Content words of the target that name what it claims is in the image."""
    words = frozenset(normalise(target).split()) - FUNCTION_WORDS - CAPTION_WORDS
    if not words:
        raise ValueError(f"target {target!r} has no content word to check references against")
    return words


def hits_target(prediction: str, target: str, exact: bool = False) -> bool:
    p, t = normalise(prediction), normalise(target)
    return p == t if exact else f" {t} " in f" {p} "


def is_eligible(references: Sequence[str], keywords: frozenset[str]) -> bool:
    return not any(keywords & set(normalise(ref).split()) for ref in references)


def eligibility(references: Sequence[Sequence[str]], target: str) -> list[bool]:
    """`is_eligible` of each test sample's references for `target`; a ValueError naming the
    target, its key words and how many samples' references use each, where none is eligible
    (no ASR could be computed)."""
    keywords = target_keywords(target)
    eligible = [is_eligible(refs, keywords) for refs in references]
    if references and not any(eligible):
        used = {word: sum(any(word in normalise(ref).split() for ref in refs) for refs in references) for word in keywords}
        counts = ", ".join(f"{word!r} in {n}" for word, n in sorted(used.items(), key=lambda item: (-item[1], item[0])) if n)
        raise ValueError(f"target {target!r}: every one of the {len(references)} test samples has a reference with one "
                         f"of its key words {sorted(keywords)} (samples per word: {counts}), so none is eligible and "
                         "no ASR can be computed; choose a target whose content words the references do not use")
    return eligible


@dataclass(frozen=True)
class SuccessRate:
    rate: float
    exact_rate: float
    hits: int
    n: int
    keyword_rate: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def success_rate(predictions: Sequence[str], target: str, eligible: Sequence[bool]) -> SuccessRate:
    """Share of eligible predictions that hit the target, exactly or not, and that name a
    key word of it (each in percent)."""
    if len(predictions) != len(eligible):
        raise ValueError(f"{len(predictions)} predictions but {len(eligible)} eligibility flags")
    chosen = [p for p, ok in zip(predictions, eligible) if ok]
    if not chosen:
        raise ValueError("no eligible test sample: every reference already mentions the target (`eligibility`)")
    hits = sum(hits_target(p, target) for p in chosen)
    exact = sum(hits_target(p, target, exact=True) for p in chosen)
    keywords = target_keywords(target)
    named = sum(bool(keywords & set(normalise(p).split())) for p in chosen)
    n = len(chosen)
    return SuccessRate(100.0 * hits / n, 100.0 * exact / n, hits, n, 100.0 * named / n)
