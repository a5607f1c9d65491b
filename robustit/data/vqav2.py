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
the first of those tied), its task "vqa"; its image is a reference to the file, decoded on
access (`robustit.data.image_ref`: the questions about one image share the decoded copy).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import vqa_instruction
from robustit.data.records import RecordLoader, int_field, read_json, text_field
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
    (the official names by default). A bad question (wrong shape, no annotation, missing or
    unreadable image, a duplicate id) or a bad annotation (no non-empty answer) raises a
    `DataError` naming its file, the question or annotation and the field
    (`robustit.data.records`); with `skip_bad=True` it is skipped and recorded in `report`. A
    file that is not the VQAv2 shape at all always raises. Ids are "vqav2-<question_id>".
    """
    root = Path(root)
    questions_path = root / questions.format(split=split)
    annotations_path = root / annotations.format(split=split)
    question_file = _read(questions_path, "questions")
    annotation_file = _read(annotations_path, "annotations")
    loader = RecordLoader(questions_path, skip_bad, report, limit)
    answers: dict[int, dict[str, Any]] = {}
    for index, annotation in enumerate(annotation_file["annotations"]):
        with loader.record(f"annotation {index}"):
            answers.update([_annotation(annotations_path, index, annotation)])
    subtype = str(question_file.get("data_subtype") or split)
    image_dir = root / images.format(split=split)
    for index, question in enumerate(question_file["questions"]):
        if loader.full:
            break
        name = f"question {index}"
        with loader.record(name):
            if not isinstance(question, dict):
                raise DataError(questions_path, f"expected an object, got {type(question).__name__}", name)
            question_id = int_field(questions_path, name, "question_id", question.get("question_id"))
            name = f"question {index} (question_id {question_id})"
            image_id = int_field(questions_path, name, "image_id", question.get("image_id"))
            text = text_field(questions_path, name, "question", question.get("question"))
            annotation = answers.get(question_id)
            if annotation is None:
                raise DataError(annotations_path, "no annotation for this question", name, "question_id")
            image_path = image_dir / f"COCO_{subtype}_{image_id:012d}.jpg"
            loader.add(Sample(
                id=f"vqav2-{question_id}",
                image=loader.image(name, "image_id", image_path),
                instruction=vqa_instruction(text),
                response=annotation["response"],
                references=annotation["answers"],
                task="vqa",
                metadata={"source": "vqav2", "split": split, "question": text, "question_id": question_id,
                          "image_id": image_id, "image_path": str(image_path),
                          "answer_type": annotation["answer_type"], "question_type": annotation["question_type"]},
            ), name)
    return loader.finish()


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
    question_id = int_field(path, name, "question_id", annotation.get("question_id"))
    name = f"annotation {index} (question_id {question_id})"
    raw = annotation.get("answers")
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise DataError(path, f"must be a list of objects with an 'answer', got {raw!r}", name, "answers")
    answers = [text_field(path, name, f"answers[{i}].answer", a.get("answer")) for i, a in enumerate(raw)
               if not (isinstance(a.get("answer"), str) and not a["answer"].strip())]
    if not answers:
        raise DataError(path, "no non-empty answer", name, "answers")
    chosen = annotation.get("multiple_choice_answer")
    if isinstance(chosen, str) and chosen.strip():
        response = text_field(path, name, "multiple_choice_answer", chosen)
    else:
        response = Counter(answers).most_common(1)[0][0]
    return question_id, {"answers": answers, "response": response, "answer_type": annotation.get("answer_type"),
                         "question_type": annotation.get("question_type")}
