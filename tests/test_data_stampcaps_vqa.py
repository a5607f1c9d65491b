"""robustit.data.stampcaps_vqa: the embedded VQA set, questions about the StampCaps images."""
import re

import pytest

from robustit.data.instructions import SHORT_ANSWER_PROMPT
from robustit.data.sources import load_split
from robustit.data.stampcaps import COLOURS, DEFAULT_STAMP_ROOT, build_stampcaps
from robustit.data.stampcaps_vqa import PATTERN_ANSWERS, QUESTION_KINDS, answer_phrase, build_stampcaps_vqa

pytestmark = pytest.mark.skipif(not DEFAULT_STAMP_ROOT.is_dir(), reason="Debian's tuxpaint-stamps-default is not installed")
SIZE = 32


def build(split: str = "train", **options):
    return build_stampcaps_vqa(split, image_size=SIZE, **options)


def question(sample) -> str:
    assert sample.instruction.endswith(f"\n{SHORT_ANSWER_PROMPT}")
    return sample.metadata["question"]


def test_every_image_gets_one_question_of_each_kind_about_the_stampcaps_image():
    samples = build(limit=4 * len(QUESTION_KINDS))
    images = build_stampcaps("train", image_size=SIZE, limit=4)
    assert [s.metadata["question_type"] for s in samples] == list(QUESTION_KINDS) * 4
    for k, image in enumerate(images):
        about = samples[k * len(QUESTION_KINDS):(k + 1) * len(QUESTION_KINDS)]
        assert all(s.image is about[0].image and s.image.tobytes() == image.image.tobytes() for s in about)
        assert all(s.task == "vqa" and s.references == [s.response] for s in about)
        assert about[0].id == f"stampcaps_vqa-train-{k:06d}-object" and about[3].id.endswith("-yesno")


def test_answers_agree_with_what_the_image_was_composed_of():
    for sample in build(limit=400):
        meta, answer, kind = sample.metadata, sample.response, sample.metadata["question_type"]
        colours, pattern = meta["background_colours"], meta["background_pattern"]
        if kind == "object":
            assert answer == answer_phrase(meta["object"]) and meta["answer_type"] == "other"
        elif kind == "background":
            assert answer == (colours[0] if pattern == "plain" else PATTERN_ANSWERS[pattern])
        elif kind == "count":
            assert answer == str(len(colours)) and meta["answer_type"] == "number"
        else:
            asked = question(sample)
            colour = re.search(r"\b(?:any|contain) (" + "|".join(COLOURS) + r")\b", asked)
            if colour:
                assert (answer == "yes") == (colour.group(1) in colours)
            else:
                assert (answer == "yes") == (meta["object"] in asked)


def test_yes_and_no_answers_are_balanced():
    answers = [s.response for s in build(limit=800, kinds=["yes/no"])]
    assert 0.4 < answers.count("yes") / len(answers) < 0.6 and set(answers) == {"yes", "no"}


def test_the_set_is_deterministic_and_seeded():
    first, again, other = build(limit=40), build(limit=40), build(limit=40, seed=1)
    key = lambda samples: [(s.id, s.instruction, s.response, s.image.tobytes()) for s in samples]
    assert key(first) == key(again) and key(first) != key(other)


def test_splits_are_the_stampcaps_splits_by_image():
    test = build("test", limit=8)
    assert all(s.metadata["image_id"].startswith("stampcaps-test-") and s.id.startswith("stampcaps_vqa-test-") for s in test)


def test_kinds_and_limit_choose_the_questions_and_the_source_is_registered():
    samples = load_split("stampcaps_vqa", "test", {"image_size": SIZE, "kinds": ["count", "object"], "limit": 3})
    assert [s.metadata["question_type"] for s in samples] == ["count", "object", "count"]
    with pytest.raises(ValueError, match="kinds must be a non-empty list"):
        build(kinds=["colour"])


def test_an_object_answer_drops_only_a_leading_article():
    assert answer_phrase("a banana") == "banana" and answer_phrase("An owl") == "owl"
    assert answer_phrase("two penguins") == "two penguins" and answer_phrase("the docks") == "docks"
