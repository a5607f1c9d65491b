"""robustit.data.karpathy: the Karpathy-split JSON loader, on fixtures written here."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import HELD_OUT_CAPTION_INSTRUCTIONS, TRAIN_CAPTION_INSTRUCTIONS, caption_instruction
from robustit.data.karpathy import DEFAULT_CAPTION_INSTRUCTION, load_karpathy
from robustit.data.sources import load_split


def write_png(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8, 6), colour)
    image.convert(mode).save(path)


def record(filename: str, split: str, captions: list[str], **extra) -> dict:
    return {"filename": filename, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in captions], **extra}


def write_json(root: Path, payload, name: str = "dataset_coco.json") -> Path:
    path = root / name
    path.write_text(json.dumps(payload) if not isinstance(payload, str) else payload, encoding="utf-8")
    return path


@pytest.fixture
def coco(tmp_path: Path) -> dict:
    """Five COCO-style records (with filepath): train, restval, val and two test images."""
    records = [
        record("tr.png", "train", ["  A red square.  ", "A square that is red."], filepath="train2014", cocoid=11),
        record("rv.png", "restval", ["A green square."], filepath="val2014", cocoid=12),
        record("va.png", "val", ["A blue square."], filepath="val2014", cocoid=13),
        record("te1.png", "test", ["A yellow square.", "", "Yellow."], filepath="val2014", cocoid=14),
        record("te2.png", "test", ["A grey square."], filepath="val2014", imgid=99),
    ]
    colours = {"tr.png": (200, 0, 0), "rv.png": (0, 200, 0), "va.png": (0, 0, 200),
               "te1.png": (220, 220, 0), "te2.png": (128, 128, 128)}
    for r in records:
        write_png(tmp_path / "images" / r["filepath"] / r["filename"], colours[r["filename"]])
    path = write_json(tmp_path, {"dataset": "coco", "images": records})
    return {"json_path": path, "image_root": tmp_path / "images", "records": records, "colours": colours}


def ids(samples) -> list[str]:
    return [s.id for s in samples]


def test_train_split_includes_restval(coco):
    samples = load_karpathy(coco["json_path"], coco["image_root"], split="train")
    assert ids(samples) == ["coco-11", "coco-12"]
    assert [s.metadata["split"] for s in samples] == ["train", "restval"]


@pytest.mark.parametrize("split, expected", [
    ("val", ["coco-13"]),
    ("test", ["coco-14", "coco-99"]),
    ("restval", ["coco-12"]),
    ("all", ["coco-11", "coco-12", "coco-13", "coco-14", "coco-99"]),
])
def test_split_selection(coco, split, expected):
    assert ids(load_karpathy(coco["json_path"], coco["image_root"], split=split)) == expected


def test_unknown_split_is_rejected(coco):
    with pytest.raises(ValueError, match="unknown Karpathy split 'dev'"):
        load_karpathy(coco["json_path"], coco["image_root"], split="dev")


def test_references_are_all_raw_captions_and_response_is_the_first(coco):
    train = load_karpathy(coco["json_path"], coco["image_root"], split="train")
    assert train[0].references == ["A red square.", "A square that is red."]  # stripped
    assert train[0].response == "A red square."
    test = load_karpathy(coco["json_path"], coco["image_root"], split="test")
    # the empty caption is dropped, the others kept in file order
    assert test[0].references == ["A yellow square.", "Yellow."]
    assert test[0].response == "A yellow square."
    assert test[1].references == ["A grey square."] and test[1].response == "A grey square."


def test_sample_fields_metadata_and_pixels(coco):
    samples = load_karpathy(coco["json_path"], coco["image_root"], split="all")
    for sample, rec in zip(samples, coco["records"]):
        expected_path = coco["image_root"] / rec["filepath"] / rec["filename"]
        assert sample.metadata == {"source": "coco", "image_path": str(expected_path), "split": rec["split"]}
        assert sample.task == "caption"
        assert sample.instruction == caption_instruction("all", sample.id)  # split "all": training pool
        assert sample.instruction in TRAIN_CAPTION_INSTRUCTIONS
        assert sample.image.mode == "RGB" and sample.image.size == (8, 6)
        pixels = np.asarray(sample.image)
        assert (pixels == np.array(coco["colours"][rec["filename"]], np.uint8)).all()


def test_instruction_pool_held_out_for_test_keyed_by_id(coco):
    load = lambda split, **kw: load_karpathy(coco["json_path"], coco["image_root"], split=split, **kw)  # noqa: E731
    test, train, val = load("test"), load("train"), load("val")
    assert all(s.instruction in HELD_OUT_CAPTION_INSTRUCTIONS for s in test)
    assert all(s.instruction in TRAIN_CAPTION_INSTRUCTIONS for s in train + val)
    assert [s.instruction for s in test] == [caption_instruction("test", i) for i in ("coco-14", "coco-99")]
    assert [s.instruction for s in train] == [caption_instruction("train", i) for i in ("coco-11", "coco-12")]
    # keyed by the id, so a limit or other records do not change a sample's instruction
    assert load("test", limit=1)[0].instruction == test[0].instruction
    assert [s.instruction for s in load("test", instructions="pool")] == [s.instruction for s in test]


def test_fixed_instruction(coco):
    samples = load_karpathy(coco["json_path"], coco["image_root"], split="all", instructions="fixed")
    assert [s.instruction for s in samples] == [DEFAULT_CAPTION_INSTRUCTION] * 5


def test_unknown_instructions_mode(coco):
    with pytest.raises(ValueError, match="unknown instructions mode 'custom'"):
        load_karpathy(coco["json_path"], coco["image_root"], split="val", instructions="custom")


def test_flickr_layout_ids_and_default_dataset_name(tmp_path):
    """No filepath (Flickr30k): the image lives at image_root/filename; no dataset name -> "karpathy";
    no cocoid -> imgid, neither -> the filename."""
    write_png(tmp_path / "1000.jpg.png", (10, 20, 30), mode="L")
    write_png(tmp_path / "2000.png", (40, 50, 60), mode="RGBA")
    records = [record("1000.jpg.png", "test", ["A dog."], imgid=7), record("2000.png", "test", ["A cat."])]
    path = write_json(tmp_path, {"images": records}, name="dataset_flickr30k.json")
    samples = load_karpathy(path, tmp_path, split="test")
    assert ids(samples) == ["karpathy-7", "karpathy-2000.png"]
    assert samples[0].metadata["image_path"] == str(tmp_path / "1000.jpg.png")
    assert samples[0].metadata["source"] == "karpathy"
    assert all(s.image.mode == "RGB" for s in samples)  # greyscale and RGBA files are converted


def test_cocoid_zero_is_an_id(tmp_path):
    write_png(tmp_path / "a.png", (1, 2, 3))
    path = write_json(tmp_path, {"dataset": "coco", "images": [record("a.png", "val", ["x"], cocoid=0, imgid=5)]})
    assert ids(load_karpathy(path, tmp_path, split="val")) == ["coco-0"]


def test_limit_keeps_the_first_samples_of_the_split(coco):
    every = load_karpathy(coco["json_path"], coco["image_root"], split="all")
    assert ids(load_karpathy(coco["json_path"], coco["image_root"], split="all", limit=3)) == ids(every)[:3]
    assert ids(load_karpathy(coco["json_path"], coco["image_root"], split="test", limit=1)) == ["coco-14"]
    assert load_karpathy(coco["json_path"], coco["image_root"], split="test", limit=0) == []
    report = LoadReport()
    load_karpathy(coco["json_path"], coco["image_root"], split="all", limit=2, report=report)
    assert report.loaded == 2 and report.skipped_count == 0


def test_registered_as_data_source(coco):
    options = {"json_path": str(coco["json_path"]), "image_root": str(coco["image_root"])}
    assert ids(load_split("karpathy", "train", options)) == ["coco-11", "coco-12"]


# ---- bad records ---------------------------------------------------------------------------


def break_record(coco, index: int, how: str) -> None:
    """Make record `index` of the fixture bad in one way, rewriting the JSON."""
    records = [dict(r) for r in coco["records"]]
    rec = records[index]
    image = coco["image_root"] / rec["filepath"] / rec["filename"]
    if how == "missing image":
        image.unlink()
    elif how == "unreadable image":
        image.write_bytes(b"this is not an image at all")
    elif how == "truncated image":
        image.write_bytes(image.read_bytes()[:40])
    elif how == "empty captions":
        rec["sentences"] = [{"raw": "   "}, {"raw": ""}]
    elif how == "no sentences":
        rec["sentences"] = []
    elif how == "sentence without raw":
        rec["sentences"] = [{"tokens": ["a", "cat"]}]
    elif how == "sentences not a list":
        rec["sentences"] = "A cat."
    elif how == "no split":
        del rec["split"]
    elif how == "not an object":
        records[index] = ["tr.png", "train"]
    coco["records"] = records
    write_json(coco["json_path"].parent, {"dataset": "coco", "images": records}, name=coco["json_path"].name)


BAD_RECORDS = [
    ("missing image", "image file not found"),
    ("unreadable image", "unreadable image"),
    ("truncated image", "unreadable image"),
    ("empty captions", "no non-empty caption"),
    ("no sentences", "no non-empty caption"),
    ("sentence without raw", "sentences[0].raw: must be a string"),
    ("sentences not a list", "sentences: must be a list"),
    ("no split", "split: must be a string"),
]


@pytest.mark.parametrize("how, problem", BAD_RECORDS)
def test_bad_record_error_names_file_record_and_filename(coco, how, problem):
    """At load, or where the image is read for a file that exists but does not decode."""
    break_record(coco, 3, how)
    with pytest.raises(DataError) as caught:
        [sample.image for sample in load_karpathy(coco["json_path"], coco["image_root"], split="all")]
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.path == str(coco["json_path"])
    assert error.record == "record 3 ('te1.png')"
    message = str(error)
    assert str(coco["json_path"]) in message and "record 3" in message and "te1.png" in message
    assert problem in message


def test_record_that_is_not_an_object(coco):
    break_record(coco, 1, "not an object")
    with pytest.raises(DataError, match=r"record 1: expected an object, got list") as caught:
        load_karpathy(coco["json_path"], coco["image_root"], split="train")
    assert str(coco["json_path"]) in str(caught.value)


@pytest.mark.parametrize("how", [how for how, _ in BAD_RECORDS] + ["not an object"])
def test_skip_bad_skips_and_counts(coco, how):
    break_record(coco, 3, how)
    report = LoadReport()
    samples = load_karpathy(coco["json_path"], coco["image_root"], split="all", skip_bad=True, report=report)
    assert ids(samples) == ["coco-11", "coco-12", "coco-13", "coco-99"]
    assert report.loaded == 4 and report.skipped_count == 1
    skipped = report.skipped[0]
    assert isinstance(skipped, DataError) and skipped.path == str(coco["json_path"])
    assert skipped.record is not None and skipped.record.startswith("record 3")


def test_skip_bad_logs_a_warning(coco, caplog):
    break_record(coco, 0, "missing image")
    with caplog.at_level("WARNING", logger="robustit.data.errors"):
        samples = load_karpathy(coco["json_path"], coco["image_root"], split="train", skip_bad=True)
    assert ids(samples) == ["coco-12"]  # without a report, skipping still works
    assert "tr.png" in caplog.text and "image file not found" in caplog.text


def test_report_accumulates_over_loads(coco):
    break_record(coco, 2, "empty captions")
    report = LoadReport()
    load_karpathy(coco["json_path"], coco["image_root"], split="all", skip_bad=True, report=report)
    load_karpathy(coco["json_path"], coco["image_root"], split="test", skip_bad=True, report=report)
    assert report.loaded == 4 + 2 and report.skipped_count == 1


def test_images_of_other_splits_are_not_opened(coco):
    break_record(coco, 3, "missing image")
    assert ids(load_karpathy(coco["json_path"], coco["image_root"], split="val")) == ["coco-13"]


def test_limit_counts_kept_samples_not_skipped_ones(coco):
    break_record(coco, 0, "unreadable image")
    report = LoadReport()
    samples = load_karpathy(coco["json_path"], coco["image_root"], split="all", skip_bad=True, limit=2, report=report)
    assert ids(samples) == ["coco-12", "coco-13"]
    assert report.skipped_count == 1 and report.loaded == 2


# ---- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    [{"filename": "a.png", "split": "test", "sentences": []}],
    {"annotations": []},
    {"images": {"a.png": "test"}},
    "null",
])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_wrong_json_shape_always_raises_naming_the_file(tmp_path, payload, skip_bad):
    path = write_json(tmp_path, payload)
    with pytest.raises(DataError, match='"images" list') as caught:
        load_karpathy(path, tmp_path, split="test", skip_bad=skip_bad)
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    assert caught.value.record is None


@pytest.mark.parametrize("content, problem", [
    ('{"images": [', "not valid JSON"), ("not json", "not valid JSON"), (b"\xff\xfe\x00{", "not UTF-8 text"),
])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_invalid_json_raises_naming_the_file(tmp_path, content, problem, skip_bad):
    path = tmp_path / "broken.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=problem) as caught:
        load_karpathy(path, tmp_path, split="test", skip_bad=skip_bad)
    assert str(path) in str(caught.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_karpathy(tmp_path / "nope.json", tmp_path)
