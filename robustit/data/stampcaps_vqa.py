"""StampCaps VQA: the embedded, offline VQA set, questions about the StampCaps images.

The images are those of `build_stampcaps` with the same arguments (so the splits are split by
image exactly as StampCaps is); each image gets one question of each kind in `kinds`:

| kind | question (one of its phrasings) | answer | answer type |
|---|---|---|---|
| "object" | "What is shown in the picture?" | the object phrase without its article ("banana") | other |
| "background" | plain: "What colour is the background?"; else "What pattern does the background have?" | the colour; else `PATTERN_ANSWERS[pattern]` | other |
| "count" | "How many colours does the background have?" | "1" (plain) or "2" | number |
| "yes/no" | "Is there {object} in the picture?" or "Is there any {colour} in the background?" | "yes" or "no" | yes/no |

A yes/no question asks about the object or about a colour with probability 1/2 each, and its
answer is "yes" with probability 1/2: the image's own object or one of its background colours,
else another stamp's object (of another object group) or a colour the background lacks. Every
draw (phrasing, subject, answer) comes from `random.Random("stampcaps_vqa:<seed>:<image id>:<kind>")`,
so the set depends on nothing but its arguments. A sample's instruction is
`vqa_instruction(question)`, its one reference the answer (VQA accuracy is then exact match),
its task "vqa", and it shares its image object with the other questions about that image.
Ids are "stampcaps_vqa-<split>-<image index:06d>-<kind without "/">"; `limit`
keeps the first `limit` questions (image-major, kinds in `kinds` order).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from robustit.data.errors import LoadReport
from robustit.data.instructions import vqa_instruction
from robustit.data.sample import Sample
from robustit.data.stampcaps import COLOURS, DEFAULT_STAMP_ROOT, build_stampcaps, stampcaps_stamps

QUESTION_KINDS = ("object", "background", "count", "yes/no")
PATTERN_ANSWERS = {"vertical": "vertical stripes", "horizontal": "horizontal stripes", "gradient": "gradient",
                   "dots": "polka dots", "checks": "checkered"}
PHRASINGS = {
    "object": ("What is shown in the picture?", "What object is in the image?", "What is this a picture of?"),
    "colour": ("What colour is the background?", "What is the colour of the background?"),
    "pattern": ("What pattern does the background have?", "What kind of pattern is in the background?"),
    "count": ("How many colours does the background have?", "How many colours are in the background?"),
    "has object": ("Is there {} in the picture?", "Does the image show {}?"),
    "has colour": ("Is there any {} in the background?", "Does the background contain {}?"),
}
ANSWER_TYPES = {"object": "other", "background": "other", "count": "number", "yes/no": "yes/no"}
ARTICLES = ("a ", "an ", "the ")


def answer_phrase(phrase: str) -> str:
    """An object phrase as an answer: its leading article dropped ("a banana" -> "banana")."""
    for article in ARTICLES:
        if phrase.lower().startswith(article) and len(phrase) > len(article):
            return phrase[len(article):]
    return phrase


def _question(kind: str, image: Sample, rng: random.Random, groups: dict[str, str]) -> tuple[str, str]:
    """(question, answer) of `kind` about `image` (a StampCaps sample); `groups` maps every
    object phrase of the split to its object group."""
    meta = image.metadata
    colours, pattern, phrase = meta["background_colours"], meta["background_pattern"], meta["object"]
    if kind == "object":
        return rng.choice(PHRASINGS["object"]), answer_phrase(phrase)
    if kind == "background":
        if pattern == "plain":
            return rng.choice(PHRASINGS["colour"]), colours[0]
        return rng.choice(PHRASINGS["pattern"]), PATTERN_ANSWERS[pattern]
    if kind == "count":
        return rng.choice(PHRASINGS["count"]), str(len(colours))
    yes = rng.random() < 0.5
    if rng.random() < 0.5:
        others = [other for other, group in groups.items() if group != groups[phrase]]
        subject = phrase if yes else rng.choice(others)
        return rng.choice(PHRASINGS["has object"]).format(subject), "yes" if yes else "no"
    subject = rng.choice(colours) if yes else rng.choice([c for c in sorted(COLOURS) if c not in colours])
    return rng.choice(PHRASINGS["has colour"]).format(subject), "yes" if yes else "no"


def build_stampcaps_vqa(
    split: str,
    root: Path = DEFAULT_STAMP_ROOT,
    image_size: int = 160,
    seed: int = 0,
    images_per_object: int | None = None,
    limit: int | None = None,
    objects: str = "shared",
    kinds: Sequence[str] = QUESTION_KINDS,
    skip_bad: bool = False,
    report: LoadReport | None = None,
) -> list[Sample]:
    """The StampCaps VQA `split` ("train", "test" or "pretrain"): questions of `kinds` about the
    images `build_stampcaps` composes with the same `root`, `image_size`, `seed`,
    `images_per_object` and `objects` (see the module docstring). A stamp that cannot be read
    is a `DataError` as in `build_stampcaps`; with `skip_bad` its images are left out and it is
    counted in `report`, whose `loaded` counts questions."""
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in QUESTION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"StampCaps VQA kinds must be a non-empty list of {list(QUESTION_KINDS)}, got {list(kinds)}")
    images_needed = None if limit is None else -(-limit // len(kinds))
    report = report if report is not None else LoadReport()
    images_report = LoadReport()
    images = build_stampcaps(split, root, image_size, seed, images_per_object, images_needed, objects,
                             skip_bad=skip_bad, report=images_report)
    report.skipped.extend(images_report.skipped)
    groups = {stamp.phrase: stamp.group for stamp in stampcaps_stamps(split, root, objects)}
    samples = []
    for image in images:
        for kind in kinds:
            rng = random.Random(f"stampcaps_vqa:{seed}:{image.id}:{kind}")
            question, answer = _question(kind, image, rng, groups)
            samples.append(Sample(
                id=f"{image.id.replace('stampcaps', 'stampcaps_vqa', 1)}-{kind.replace('/', '')}",
                image=image.image,
                instruction=vqa_instruction(question),
                response=answer,
                references=[answer],
                task="vqa",
                metadata={**image.metadata, "source": "stampcaps_vqa", "image_id": image.id, "question": question,
                          "question_type": kind, "answer_type": ANSWER_TYPES[kind]},
            ))
    samples = samples if limit is None else samples[:limit]
    report.loaded += len(samples)
    return samples
