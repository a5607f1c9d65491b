"""robustit.data.llava and robustit.data.mimicit: conversation formats, on fixtures written here."""
import json
from pathlib import Path

import pytest
from PIL import Image

from robustit.data.conversation import context_instruction
from robustit.data.errors import DataError, LoadReport
from robustit.data.llava import load_llava
from robustit.data.mimicit import load_mimicit
from robustit.data.sources import load_split


def write_images(root: Path, *names: str) -> None:
    for k, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(root / name)


def llava_record(record_id: str, image: str, *turns: str) -> dict:
    return {"id": record_id, "image": image,
            "conversations": [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(turns)]}


@pytest.fixture
def llava_file(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", "coco/1.jpg", "coco/2.jpg")
    records = [
        llava_record("1", "coco/1.jpg", "<image>\nWhat is on the table?", "A red cup.", "What colour is it?", "Red."),
        llava_record("2", "coco/2.jpg", "Describe the picture.\n<image>", "A dog on grass."),
    ]
    path = tmp_path / "llava_train.json"
    path.write_text(json.dumps(records))
    return path


def test_every_gpt_turn_is_a_sample_with_the_earlier_turns_as_context(llava_file):
    samples = load_llava("train", llava_file, llava_file.parent / "images")
    assert [s.id for s in samples] == ["llava-1-0", "llava-1-1", "llava-2-0"]
    assert samples[0].instruction == "What is on the table?" and samples[0].response == "A red cup."
    assert samples[1].instruction == "User: What is on the table?\nAssistant: A red cup.\nWhat colour is it?"
    assert samples[1].response == "Red." and samples[1].references == ["Red."]
    assert samples[2].instruction == "Describe the picture."
    assert samples[0].image is samples[1].image and all(s.task == "caption" for s in samples)


def test_the_split_fills_the_path_and_the_source_is_registered(llava_file):
    options = {"json_path": str(llava_file.parent / "llava_{split}.json"), "image_root": str(llava_file.parent / "images"),
               "task": "vqa", "limit": 2}
    samples = load_split("llava", "train", options)
    assert [s.id for s in samples] == ["llava-1-0", "llava-1-1"] and samples[0].task == "vqa"


@pytest.mark.parametrize("record, problem", [
    ({"id": "9", "conversations": []}, "image: is missing"),
    (llava_record("9", "coco/1.jpg", "Hi?"), "conversations: ends with a human turn"),
    ({"id": "9", "image": "coco/1.jpg", "conversations": [{"from": "gpt", "value": "A."}]},
     r"conversations\[0\]: must be \{'from': 'human'"),
    (llava_record("9", "coco/1.jpg", "<image>", "A."), r"conversations\[0\]\.value: is empty"),
    (llava_record("9", "coco/1.jpg", "Q?", 5), r"conversations\[1\]\.value: must be a string, got int 5"),
    (llava_record("9", "coco/none.jpg", "Q?", "A."), "image: image file not found"),
    (llava_record("1", "coco/2.jpg", "Q?", "A."), "id: duplicate id 'llava-1-0'"),
])
def test_a_bad_llava_record_names_file_and_record_or_is_skipped(llava_file, record, problem):
    records = json.loads(llava_file.read_text()) + [record]
    llava_file.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"llava_train\.json, record 2 \(id '(9|1)'\), {problem}"):
        load_llava("train", llava_file, llava_file.parent / "images")
    report = LoadReport()
    assert len(load_llava("train", llava_file, llava_file.parent / "images", skip_bad=True, report=report)) == 3
    assert report.loaded == 3 and report.skipped_count == 1


def mimic_line(record_id: str, instruction: str, answer: str, related=(), image="IMG_1") -> str:
    return json.dumps({"id": record_id, "instruction": instruction, "answer": answer, "image_ids": [image],
                       "rel_ins_ids": list(related)})


@pytest.fixture
def mimic_file(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", "IMG_1.jpg", "IMG_2.jpg")
    lines = [
        mimic_line("LA_0", "What animal is this?", "A cat.", ["LA_1", "LA_2"]),
        mimic_line("LA_1", "What is it doing?", "Sleeping.", ["LA_0", "LA_2"]),
        "",
        mimic_line("LA_2", "Where?", "On a sofa.", ["LA_1", "LA_0"]),
        mimic_line("SD_0", "Describe it.", "A tree.", image="IMG_2"),
    ]
    path = tmp_path / "mimicit_train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_mimicit_answer_is_tuned_after_its_earlier_related_turns(mimic_file):
    samples = load_mimicit("train", mimic_file, mimic_file.parent / "images")
    assert [s.id for s in samples] == ["mimicit-LA_0", "mimicit-LA_1", "mimicit-LA_2", "mimicit-SD_0"]
    assert samples[0].instruction == "What animal is this?"
    assert samples[2].instruction == context_instruction(
        [("What animal is this?", "A cat."), ("What is it doing?", "Sleeping.")], "Where?")
    assert samples[2].response == "On a sofa." and samples[2].metadata["context_turns"] == 2
    assert samples[0].image is samples[1].image and samples[3].image is not samples[0].image


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON: Expecting property name"),
    (mimic_line("X", "Q?", " "), "answer: is empty"),
    (json.dumps({"id": "X", "instruction": "Q?", "answer": "A.", "image_ids": ["IMG_1", "IMG_2"]}),
     "image_ids: must list exactly one image id"),
    (mimic_line("X", "Q?", "A.", ["NOPE"]), "rel_ins_ids: names 'NOPE'"),
    (mimic_line("LA_0", "Q?", "A."), r"id: duplicate id 'mimicit-LA_0' \(first in line 1"),
    (mimic_line("X", "Q?", "A.", image="IMG_9"), "image_ids: image file not found"),
])
def test_a_bad_mimicit_line_names_file_and_line_or_is_skipped(mimic_file, line, problem):
    mimic_file.write_text(mimic_file.read_text() + line + "\n")
    with pytest.raises(DataError, match=rf"mimicit_train\.jsonl, line 6.*{problem}"):
        load_mimicit("train", mimic_file, mimic_file.parent / "images")
    report = LoadReport()
    assert len(load_mimicit("train", mimic_file, mimic_file.parent / "images", skip_bad=True, report=report)) == 4
    assert report.skipped_count == 1 and report.loaded == 4


def test_mimicit_is_a_registered_source_with_an_image_name_template(mimic_file):
    (mimic_file.parent / "images" / "IMG_1.jpg").rename(mimic_file.parent / "images" / "IMG_1.png")
    (mimic_file.parent / "images" / "IMG_2.jpg").rename(mimic_file.parent / "images" / "IMG_2.png")
    options = {"jsonl_path": str(mimic_file.parent / "mimicit_{split}.jsonl"),
               "image_root": str(mimic_file.parent / "images"), "images": "{image_id}.png"}
    assert len(load_split("mimicit", "train", options)) == 4
