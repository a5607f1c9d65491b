"""Loader for VQAv2 (Goyal et al. 2017) as its official files are laid out under `root`:

    v2_OpenEnded_mscoco_<split>_questions.json   {"data_subtype": "val2014", "questions":
                                                  [{"image_id", "question", "question_id"}, ...]}
    v2_mscoco_<split>_annotations.json           {"annotations": [{"question_id", "answers":
                                                  [{"answer", ...}, ...], "multiple_choice_answer",
                                                  "answer_type", "question_type", ...}, ...]}
    <split>/COCO_<data_subtype>_<image_id:012d>.jpg

`split` is the files' split name ("train2014", "val2014"); the test splits carry no
annotations and cannot be loaded. Each question is one sample: its instruction is
`vqa_instruction(question)`, its `references` are the non-empty human answers (ten in VQAv2), its
`response` the annotation's `multiple_choice_answer` (where absent, the most frequent answer,
the first of those tied), its task "vqa"; its image is decoded once and shared by every
question about it.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import vqa_instruction
from robustit.data.records import ImageReader, keep_good, read_json
from robustit.data.sample import Sample

QUESTIONS_FILE = "v2_OpenEnded_mscoco_{split}_questions.json"
ANNOTATIONS_FILE = "v2_mscoco_{split}_annotations.json"
IMAGE_DIR = "{split}"


def load_vqav2(
    split: str,
    root: str | Path,
    questions: str = QUESTIONS_FILE,
    annotations: str = ANNOTATIONS_FILE,
    images: str = IMAGE_DIR,
    skip_bad: bool = False,
    limit: int | None = None,
    report: LoadReport | None = None,
) -> list[Sample]:
    """The questions of `split`, in the questions file's order (the first `limit`).

    `questions`, `annotations` and `images` are paths under `root` with "{split}" filled in
    (the official names by default). A bad question (wrong shape, no annotation, no non-empty
    answer, missing or unreadable image) raises `DataError` naming its file and the question;
    with `skip_bad=True` it is skipped and recorded in `report`, as is a bad annotation. A file
    that is not the VQAv2 shape at all always raises. Ids are "vqav2-<question_id>".
    """
    root = Path(root)
    report = report if report is not None else LoadReport()
    questions_path = root / questions.format(split=split)
    annotations_path = root / annotations.format(split=split)
    question_file = _read(questions_path, "questions")
    answers = dict(keep_good(_read(annotations_path, "annotations")["annotations"],
                             lambda i, a: [_annotation(annotations_path, i, a)], skip_bad, report))
    subtype = str(question_file.get("data_subtype") or split)
    read_image = ImageReader(questions_path, root / images.format(split=split))

    def build(index: int, question: Any) -> list[Sample]:
        name = f"question {index}"
        if not isinstance(question, dict):
            raise DataError(questions_path, f"expected an object, got {type(question).__name__}", name)
        for key, kind in (("question_id", int), ("image_id", int), ("question", str)):
            if not isinstance(question.get(key), kind) or isinstance(question.get(key), bool):
                raise DataError(questions_path, f"missing or non-{kind.__name__} {key!r}", name)
        name = f"question {index} (question_id {question['question_id']})"
        if not question["question"].strip():
            raise DataError(questions_path, "empty 'question'", name)
        annotation = answers.get(question["question_id"])
        if annotation is None:
            raise DataError(annotations_path, "no annotation for this question", name)
        image_name = f"COCO_{subtype}_{question['image_id']:012d}.jpg"
        return [Sample(
            id=f"vqav2-{question['question_id']}",
            image=read_image(image_name, name),
            instruction=vqa_instruction(question["question"]),
            response=annotation["response"],
            references=annotation["answers"],
            task="vqa",
            metadata={"source": "vqav2", "split": split, "question": question["question"].strip(),
                      "question_id": question["question_id"], "image_id": question["image_id"],
                      "image_path": str(read_image.root / image_name), "answer_type": annotation["answer_type"],
                      "question_type": annotation["question_type"]},
        )]

    samples = keep_good(question_file["questions"], build, skip_bad, report, limit)
    report.loaded += len(samples)
    return samples


def _read(path: Path, key: str) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(path, f'expected a JSON object with a "{key}" list (VQAv2 format)')
    return data


def _annotation(path: Path, index: int, annotation: Any) -> tuple[int, dict[str, Any]]:
    """(question_id, {"answers", "response", "answer_type", "question_type"}) of one annotation."""
    name = f"annotation {index}"
    if not isinstance(annotation, dict):
        raise DataError(path, f"expected an object, got {type(annotation).__name__}", name)
    question_id = annotation.get("question_id")
    if not isinstance(question_id, int) or isinstance(question_id, bool):
        raise DataError(path, "missing or non-int 'question_id'", name)
    name = f"annotation {index} (question_id {question_id})"
    raw = annotation.get("answers")
    if not isinstance(raw, list) or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in raw):
        raise DataError(path, "'answers' must be a list of objects with a string 'answer'", name)
    answers = [a["answer"].strip() for a in raw if a["answer"].strip()]
    if not answers:
        raise DataError(path, "no non-empty answer", name)
    chosen = annotation.get("multiple_choice_answer")
    response = chosen.strip() if isinstance(chosen, str) and chosen.strip() else Counter(answers).most_common(1)[0][0]
    return question_id, {"answers": answers, "response": response, "answer_type": annotation.get("answer_type"),
                         "question_type": annotation.get("question_type")}
