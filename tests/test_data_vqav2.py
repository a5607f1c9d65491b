"""robustit.data.vqav2: the VQAv2 loader, on official-layout files written here."""
import json
from pathlib import Path

import pytest
from PIL import Image

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import SHORT_ANSWER_PROMPT
from robustit.data.sources import load_split
from robustit.data.vqav2 import load_vqav2

TEN = ["2", "2", "two", "2", "3", "2", "2", "2", "2", "2"]


def write_vqav2(root: Path, questions: list, annotations: list, split: str = "val2014") -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    for image_id, colour in ((1, (200, 0, 0)), (2, (0, 0, 200))):
        Image.new("RGB", (8, 8), colour).save(root / split / f"COCO_{split}_{image_id:012d}.jpg")
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
        json.dumps({"data_subtype": split, "questions": questions}))
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))


def annotation(question_id: int, answers: list[str], **extra) -> dict:
    return {"question_id": question_id, "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
            "answer_type": "other", "question_type": "what", **extra}


@pytest.fixture
def vqa_root(tmp_path: Path) -> Path:
    questions = [
        {"image_id": 1, "question": "How many dogs are there?", "question_id": 10},
        {"image_id": 1, "question": "Is it red?", "question_id": 11},
        {"image_id": 2, "question": "What colour is it?", "question_id": 20},
    ]
    annotations = [
        annotation(10, TEN, multiple_choice_answer="2", answer_type="number"),
        annotation(11, ["yes"] * 10, multiple_choice_answer="yes", answer_type="yes/no"),
        annotation(20, ["blue", "navy", "navy", "blue"]),
    ]
    write_vqav2(tmp_path, questions, annotations)
    return tmp_path


def test_each_question_is_a_vqa_sample_with_every_human_answer(vqa_root):
    samples = load_vqav2("val2014", vqa_root)
    assert [s.id for s in samples] == ["vqav2-10", "vqav2-11", "vqav2-20"]
    first = samples[0]
    assert first.task == "vqa" and first.references == TEN and first.response == "2"
    assert first.instruction == f"How many dogs are there?\n{SHORT_ANSWER_PROMPT}"
    assert first.metadata["answer_type"] == "number" and first.metadata["question"] == "How many dogs are there?"
    assert first.image.getpixel((0, 0))[0] > 150


def test_questions_about_one_image_share_one_decoded_copy(vqa_root):
    samples = load_vqav2("val2014", vqa_root)
    assert samples[0].image is samples[1].image and samples[0].image is not samples[2].image


def test_the_response_is_the_most_frequent_answer_where_the_annotation_has_no_multiple_choice_answer(vqa_root):
    assert load_vqav2("val2014", vqa_root)[2].response == "blue"


def test_registered_as_a_data_source_and_limit_keeps_a_prefix(vqa_root):
    samples = load_split("vqav2", "val2014", {"root": str(vqa_root), "limit": 2})
    assert [s.id for s in samples] == ["vqav2-10", "vqav2-11"]


def test_a_question_without_annotation_names_the_file_and_question(tmp_path):
    write_vqav2(tmp_path, [{"image_id": 1, "question": "Why?", "question_id": 7}], [annotation(8, ["no"])])
    with pytest.raises(DataError, match=r"annotations\.json, question 0 \(question_id 7\), question_id: no annotation"):
        load_vqav2("val2014", tmp_path)


@pytest.mark.parametrize("question, problem", [
    ({"image_id": 1, "question_id": 1}, "question: must be a string, got NoneType None"),
    ({"image_id": "1", "question": "Why?", "question_id": 1}, "image_id: must be an integer, got str '1'"),
    ({"image_id": 9, "question": "Why?", "question_id": 1}, "image_id: image file not found"),
    ("not an object", "expected an object"),
])
def test_bad_questions_raise_or_are_skipped_and_counted(tmp_path, question, problem):
    good = {"image_id": 2, "question": "What?", "question_id": 2}
    write_vqav2(tmp_path, [question, good], [annotation(1, ["a"]), annotation(2, ["b"])])
    with pytest.raises(DataError, match=problem):
        load_vqav2("val2014", tmp_path)
    report = LoadReport()
    assert [s.id for s in load_vqav2("val2014", tmp_path, skip_bad=True, report=report)] == ["vqav2-2"]
    assert report.loaded == 1 and report.skipped_count == 1 and problem in str(report.skipped[0])


def test_a_bad_annotation_is_skipped_and_counted_under_skip_bad(tmp_path):
    write_vqav2(tmp_path, [{"image_id": 2, "question": "What?", "question_id": 2}],
                [annotation(1, ["", " "]), annotation(2, ["b"])])
    with pytest.raises(DataError, match=r"annotation 0 \(question_id 1\), answers: no non-empty answer"):
        load_vqav2("val2014", tmp_path)
    report = LoadReport()
    assert len(load_vqav2("val2014", tmp_path, skip_bad=True, report=report)) == 1 and report.skipped_count == 1


def test_a_file_of_another_shape_always_raises(vqa_root):
    (vqa_root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match='"annotations" list'):
        load_vqav2("val2014", vqa_root, skip_bad=True)
