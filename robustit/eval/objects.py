"""Object-naming accuracy of captions: does a caption name the object the image shows?

Texts are normalised as in `robustit.eval.asr.normalise` (lowercase, punctuation -> space,
whitespace collapsed). The object phrase o loses one leading article ("a", "an" or "the"; no
other determiner such as "some" or "two") after normalisation, giving core(o); a prediction p
names the object when core(o) occurs in norm(p) as whole words, i.e. " core(o) " is a substring
of " norm(p) ". Over the samples S that have an object phrase (samples whose phrase is None are
skipped):

    object accuracy = 100 * |{i in S : p_i names o_i}| / |S|.
"""
from __future__ import annotations

from typing import Sequence

from robustit.eval.asr import normalise

ARTICLES = frozenset({"a", "an", "the"})


def object_core(phrase: str) -> str:
    """The normalised object phrase without one leading article: "A UK post box" -> "uk post box"."""
    words = normalise(phrase).split()
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    if not words:
        raise ValueError(f"object phrase {phrase!r} has no word to look for")
    return " ".join(words)


def object_named(prediction: str, phrase: str) -> bool:
    """Whether `prediction` names the object `phrase` (see the module docstring)."""
    return f" {object_core(phrase)} " in f" {normalise(prediction)} "


def object_accuracy(predictions: Sequence[str], phrases: Sequence[str | None]) -> dict[str, float | int | None]:
    """{"rate": percent of samples with a phrase whose prediction names it, "hits", "n"}.

    `rate` is None when no sample has a phrase (n = 0).
    """
    if len(predictions) != len(phrases):
        raise ValueError(f"{len(predictions)} predictions but {len(phrases)} object phrases")
    chosen = [(p, o) for p, o in zip(predictions, phrases) if o is not None]
    hits = sum(object_named(p, o) for p, o in chosen)
    return {"rate": 100.0 * hits / len(chosen) if chosen else None, "hits": hits, "n": len(chosen)}
