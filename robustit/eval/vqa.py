"""VQA accuracy (Antol et al. 2015; the VQAv2 evaluation script).

Answers are normalised as the official script does: newlines and tabs become spaces and the
text is stripped; each punctuation mark of `PUNCTUATION` is deleted where it touches a space
(or anywhere when the text holds a comma between digits) and becomes a space elsewhere; a
period not followed by a digit is deleted (the script's own pattern, `PERIOD_STRIP`); then the
text is lowercased and split into words, number words become digits ("two" -> "2", "none" ->
"0"), the articles "a", "an" and "the" are dropped and contractions get their apostrophe
("dont" -> "don't"). The official script normalises the human answers only where they
disagree; here the prediction and every human answer are always normalised, so that a
generated "Yes." scores like "yes" whatever the annotators wrote.

With norm(p) the normalised prediction and norm(a_1..a_n) the normalised human answers of one
question, its accuracy in [0, 1] is

    acc = 1[norm(p) = norm(a_1)]                                        if n = 1 (exact match)
    acc = (1/n) * sum_i min(1, |{j != i : norm(a_j) = norm(p)}| / 3)     if n >= 2,

the second being VQAv2's soft accuracy: min(#humans that said p / 3, 1) averaged over the n
leave-one-out subsets of the answers (the 10 choose 9 subsets for VQAv2's ten answers). A set's
VQA accuracy is 100 * mean(acc) over its questions, also given per answer type (VQAv2's
"yes/no", "number", "other").
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}


def normalise_answer(text: str) -> str:
    """The official VQA normalisation of one answer (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    digit_comma = COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or digit_comma else " ")
    out = PERIOD_STRIP.sub("", out)
    words = [NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def answer_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The accuracy in [0, 1] of one prediction against a question's human answers: exact match
    for one answer, VQAv2's leave-one-out soft accuracy for several."""
    if isinstance(answers, str) or not answers:
        raise ValueError(f"a VQA question needs a non-empty list of answers, got {answers!r}")
    predicted = normalise_answer(prediction)
    normalised = [normalise_answer(answer) for answer in answers]
    if len(normalised) == 1:
        return float(predicted == normalised[0])
    said = sum(answer == predicted for answer in normalised)
    others = [said - (answer == predicted) for answer in normalised]
    return sum(min(1.0, count / 3) for count in others) / len(normalised)


def vqa_accuracy(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], answer_types: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """{"accuracy": 100 * mean acc, "n", "by_answer_type": {type: {"accuracy", "n"}}} over the
    questions; `answer_types` (None entries skipped) groups them, as VQAv2 reports."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise ValueError("VQA accuracy needs at least one question")
    types = list(answer_types) if answer_types is not None else [None] * len(predictions)
    if len(types) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(types)} answer types")
    scores = [answer_accuracy(p, a) for p, a in zip(predictions, answers)]
    grouped: dict[str, list[float]] = defaultdict(list)
    for kind, score in zip(types, scores):
        if kind is not None:
            grouped[kind].append(score)
    return {
        "accuracy": 100.0 * sum(scores) / len(scores),
        "n": len(scores),
        "by_answer_type": {kind: {"accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for kind, v in sorted(grouped.items())},
    }
