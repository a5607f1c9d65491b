"""Every kind of bad input, in one table: what `robustit run` says about it, before tuning starts,
and what `--skip-bad` (data.skip_bad) does with a bad record instead."""
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import write_karpathy
from test_data_conversations import llava_record, mimic_line, write_images
from test_data_stampcaps import write_stamp
from test_data_vqav2 import annotation, write_vqav2
from test_experiment import tiny_overrides
from robustit.cli import main
from robustit.config import ConfigError, load_config
from robustit.data.errors import DataError, LoadReport
from robustit.data.sources import load_split
from robustit.experiment import Experiment

BROKEN = "record 0 ('red_circle_0.png')"  # a training record of the fixture
DUPLICATE = "record 1 ('red_square_0.png')"


class TuningStarted(Exception):
    pass


@dataclass
class Case:
    """`setup(folder, records)` breaks the fixture (rewriting `records` breaks the JSON file)
    and returns the extra `--set` overrides; `error` is (where, record, field, problem):
    where = the data file's name, the `--set` or YAML file the setting came from, or None for
    an experiment-level check; None for input that is accepted."""

    name: str
    setup: Callable[[Path, list], list[str]]
    error: tuple[str | None, str | None, str | None, str] | None


def done(*_) -> list[str]:
    return []


def image_of(folder: Path, records: list, index: int = 0) -> Path:
    return folder / records[index]["filename"]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def truncate(path: Path) -> None:
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def caption(records: list, value) -> list[str]:
    return done(records[0].update(sentences=[{"raw": value}]))


def stampcaps(folder: Path, broken: Callable[[Path], None]) -> list[str]:
    root = folder / "stamps"
    for i in range(4):
        write_stamp(root, f"things/t{i}.png", f"Thing {i}.")
    broken(root)
    options = {"root": str(root), "image_size": 16, "images_per_object": 3}
    return ["data.source=stampcaps", f"data.options={json.dumps(options)}", "data.test_split=test"]


def config_file(folder: Path, text: str) -> list[str]:
    return done((folder / "bad.yaml").write_text(text))


CASES = [
    Case("missing image file", lambda f, r: done(image_of(f, r).unlink()),
         ("captions.json", BROKEN, "filename", "image file not found")),
    Case("unreadable image", lambda f, r: done(image_of(f, r).write_bytes(b"not an image")),
         ("captions.json", BROKEN, "filename", "(not an image file PIL can read)")),
    Case("truncated image", lambda f, r: done(truncate(image_of(f, r))),
         ("captions.json", BROKEN, "filename", "(image file is truncated")),
    Case("zero-size image", lambda f, r: done(image_of(f, r).write_bytes(b"")),
         ("captions.json", BROKEN, "filename", "image file is empty (0 bytes)")),
    Case("zero-pixel image", lambda f, r: done(image_of(f, r).write_bytes(png_claiming(0, 32))),
         ("captions.json", BROKEN, "filename", "(not an image file PIL can read)")),
    Case("huge image", lambda f, r: done(image_of(f, r).write_bytes(png_claiming(30000, 30000))),
         ("captions.json", BROKEN, "filename", "image too large (Image size (900000000 pixels) exceeds limit of")),
    Case("16-bit greyscale image", lambda f, r: done(Image.new("I;16", (32, 32)).save(image_of(f, r))),
         ("captions.json", BROKEN, "filename", "image mode 'I;16' (16-bit or float samples) is not converted")),
    Case("palette and grey-with-alpha images are converted to RGB",
         lambda f, r: done(Image.open(image_of(f, r)).convert("P").save(image_of(f, r)),
                           Image.open(image_of(f, r, 1)).convert("LA").save(image_of(f, r, 1))), None),
    Case("empty response", lambda f, r: caption(r, "   "), ("captions.json", BROKEN, "sentences", "no non-empty caption")),
    Case("non-string response", lambda f, r: caption(r, 5),
         ("captions.json", BROKEN, "sentences[0].raw", "must be a string, got int 5")),
    Case("lone surrogate in a response", lambda f, r: caption(r, "A red \udc80 circle."),
         ("captions.json", BROKEN, "sentences[0].raw", "is not valid Unicode text (a lone surrogate '\\udc80' at position 6)")),
    Case("record of the wrong JSON shape", lambda f, r: done(r.__setitem__(0, ["red_circle_0.png", "train"])),
         ("captions.json", "record 0", None, "expected an object, got list")),
    Case("file of the wrong JSON shape", lambda f, r: done((f / "captions.json").write_text('{"annotations": []}')),
         ("captions.json", None, None, 'expected a JSON object with an "images" list')),
    Case("duplicate ids", lambda f, r: done(r[1].update(imgid=r[0]["imgid"])),
         ("captions.json", DUPLICATE, "id", "duplicate id 'shapes-0' (first in record 0 ('red_circle_0.png'))")),
    Case("non-UTF-8 data file", lambda f, r: done((f / "captions.json").write_bytes(b'{"images": ["caf\xe9"]}')),
         ("captions.json", None, None, "not UTF-8 text (byte 0xe9 at offset 16: invalid continuation byte)")),
    Case("non-UTF-8 caption file (StampCaps)",
         lambda f, r: stampcaps(f, lambda root: (root / "things/t1.txt").write_bytes(b"Caf\xe9.\n")),
         ("stamps", "stamp things/t1.png", "caption", "not UTF-8 text (byte 0xe9 at offset 3")),
    Case("unreadable stamp image (StampCaps)",
         lambda f, r: stampcaps(f, lambda root: (root / "things/t2.png").write_bytes(b"no png")),
         ("stamps", "stamp things/t2.png", "image", "(not an image file PIL can read)")),
    Case("unknown config key", lambda f, r: ["train.nope=1"],
         ("--set train.nope=1", None, "train.nope", "unknown config key(s) ['train.nope']; known in train: [")),
    Case("unknown config key in a file", lambda f, r: config_file(f, "train:\n  checkpoint_evry: 5\n"),
         ("bad.yaml", None, "train.checkpoint_evry", "unknown config key(s) ['train.checkpoint_evry']")),
    Case("unknown data option", lambda f, r: ["data.options.limt=3"],
         ("--set data.options.limt=3", None, "data.options.limt", "is not an option of data source 'karpathy'")),
    Case("wrong value type", lambda f, r: ["train.batch_size=eight"],
         ("--set train.batch_size=eight", None, "train.batch_size", "must be an integer, got 'eight'")),
    Case("boolean for a number", lambda f, r: ["train.max_steps=true"],
         ("--set train.max_steps=true", None, "train.max_steps", "must be an integer, got True")),
    Case("value out of range", lambda f, r: ["eval.batch_size=0"],
         ("--set eval.batch_size=0", None, "eval.batch_size", "must be an integer >= 1, got 0")),
    Case("defense parameter out of range in a file", lambda f, r: config_file(f, "defense:\n  name: aar\n  params: {gamma: 2}\n"),
         ("bad.yaml", None, "defense.params.gamma", "must be a number in (0.0, 1.0], got 2.0")),
    Case("poison rate of 1", lambda f, r: ["attack.poison_rate=1"],
         ("--set attack.poison_rate=1", None, "attack.poison_rate", "must be below 1: 1 poisons every training sample")),
    Case("poison rate of 0 is the clean control", lambda f, r: ["attack.poison_rate=0"], None),
    Case("poison rate that poisons no sample", lambda f, r: ["attack.poison_rate=0.01"],
         (None, None, None, "attack.poison_rate 0.01 of 12 training samples poisons 0 of them (round(0.01 x 12))")),
    Case("target whose key words every test sample's references use", lambda f, r: ["attack.target=A circle and a square."],
         (None, None, None, "key words ['circle', 'square'] (samples per word: ")),
    Case("test set smaller than a batch", lambda f, r: ["eval.batch_size=32"], None),
    Case("training set smaller than a batch", lambda f, r: ["train.batch_size=32"], None),
    Case("empty test split", lambda f, r: ["data.test_split=restval"],
         (None, None, None, "data.test_split 'restval' of data source 'karpathy' holds no samples")),
    Case("test size of 0", lambda f, r: ["data.test_size=0"],
         ("--set data.test_size=0", None, "data.test_size", "must be an integer >= 1, got 0")),
]
RECORD_CASES = [case for case in CASES if case.error and case.error[1] and case.error[1].startswith(("record", "stamp"))]


def setting_up(case: Case, folder: Path) -> tuple[list[str], Path]:
    """The case's overrides over the tiny model's run on a fresh Karpathy fixture in `folder`."""
    json_path = write_karpathy(folder)
    data = json.loads(json_path.read_text())
    before = json.dumps(data)
    extra = case.setup(folder, data["images"])
    if json.dumps(data) != before:
        json_path.write_text(json.dumps(data))
    overrides = tiny_overrides({"json_path": str(json_path), "image_root": str(folder)}, folder)
    if "data.source=stampcaps" in extra:
        overrides = [o for o in overrides if not o.startswith("data.")]
    return [*overrides, "evaluate_base=false", *extra], folder / "bad.yaml"


def run_until_tuning(overrides: list[str], config_path: Path, monkeypatch) -> Experiment:
    """`Experiment.run` of the config, stopped where tuning would start."""
    def tuning(*args, **kwargs):
        raise TuningStarted

    monkeypatch.setattr(Experiment, "tune", tuning)
    experiment = Experiment(load_config([config_path] if config_path.exists() else None, overrides), progress=False)
    with pytest.raises(TuningStarted):
        experiment.run()
    return experiment


@pytest.mark.parametrize("case, skip_bad", [
    *(pytest.param(case, False, id=case.name) for case in CASES),
    *(pytest.param(case, True, id=f"{case.name}, skip-bad") for case in RECORD_CASES),
])
def test_bad_input_is_named_before_tuning_or_skipped_and_counted(case, skip_bad, tmp_path, monkeypatch, one_thread):
    overrides, config_path = setting_up(case, tmp_path)
    if case.error is None:
        experiment = run_until_tuning(overrides, config_path, monkeypatch)
        assert all(s.image.mode == "RGB" for s in experiment.train_samples + experiment.test_samples)
        return
    where, record, field, problem = case.error
    if skip_bad:
        experiment = run_until_tuning([*overrides, "data.skip_bad=true"], config_path, monkeypatch)
        skipped = [error for report in experiment.load_reports.values() for error in report.skipped]
        assert any(e.record == record and e.field == field and problem in e.problem for e in skipped)
        assert experiment.load_reports["train"].skipped_count >= 1
        return
    with pytest.raises(ValueError) as caught:
        run_until_tuning(overrides, config_path, monkeypatch)
    error = caught.value
    if isinstance(error, DataError):
        assert (Path(error.path).name, error.record, error.field) == (where, record, field)
    elif isinstance(error, ConfigError):
        assert (Path(error.source).name if where == "bad.yaml" else error.source, error.field) == (where, field)
    else:
        assert where is None
    assert problem in str(error)


def test_skipped_records_are_counted_in_metrics_json_and_small_sets_run_through(tmp_path, monkeypatch, one_thread):
    """--skip-bad end to end, with the test and the training set each smaller than its batch."""
    monkeypatch.setattr("robustit.eval.caption_metrics._meteor_score", lambda gts, res: 0.0)
    json_path = write_karpathy(tmp_path)
    data = json.loads(json_path.read_text())
    (tmp_path / data["images"][0]["filename"]).unlink()
    data["images"][11]["sentences"] = [{"raw": 5}]
    json_path.write_text(json.dumps(data))
    settings = [*tiny_overrides({"json_path": str(json_path), "image_root": str(tmp_path)}, tmp_path),
                "evaluate_base=false", "train.batch_size=16", "eval.batch_size=32"]
    assert main(["run", *(arg for setting in settings for arg in ("--set", setting)), "--skip-bad"]) == 0
    metrics = json.loads((tmp_path / "runs" / "tiny" / "badnets" / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_test"]) == (11, 1)
    assert {role: (part["loaded"], part["skipped"]) for role, part in metrics["data"].items()} == {"train": (11, 1),
                                                                                                   "test": (1, 1)}
    assert metrics["data"]["test"]["skipped_records"] == [
        f"{json_path}, record 11 ('green_square_1.png'), sentences[0].raw: must be a string, got int 5"]
    assert metrics["caption"]["n"] == 1 and metrics["train"]["steps"] == 4


def karpathy_file(folder: Path) -> tuple[str, str, dict, Path, Path, tuple[str, str]]:
    json_path = write_karpathy(folder)
    return "karpathy", "train", {"json_path": str(json_path), "image_root": str(folder)}, json_path, \
        folder / "red_circle_0.png", (BROKEN, "filename")


def vqav2_file(folder: Path) -> tuple[str, str, dict, Path, Path, tuple[str, str]]:
    write_vqav2(folder, [{"image_id": 1, "question": "Why?", "question_id": 7},
                         {"image_id": 2, "question": "What?", "question_id": 8}],
                [annotation(7, ["no"]), annotation(8, ["yes"])])
    return "vqav2", "val2014", {"root": str(folder)}, folder / "v2_OpenEnded_mscoco_val2014_questions.json", \
        folder / "val2014" / "COCO_val2014_000000000001.jpg", ("question 0 (question_id 7)", "image_id")


def llava_file(folder: Path) -> tuple[str, str, dict, Path, Path, tuple[str, str]]:
    write_images(folder, "a.jpg", "b.jpg")
    path = folder / "llava.json"
    path.write_text(json.dumps([llava_record("1", "a.jpg", "Q?", "A."), llava_record("2", "b.jpg", "Q?", "B.")]))
    return "llava", "train", {"json_path": str(path), "image_root": str(folder)}, path, folder / "a.jpg", \
        ("record 0 (id '1')", "image")


def mimicit_file(folder: Path) -> tuple[str, str, dict, Path, Path, tuple[str, str]]:
    write_images(folder, "IMG_1.jpg", "IMG_2.jpg")
    path = folder / "mimicit.jsonl"
    path.write_text(mimic_line("A", "Q?", "A.") + "\n" + mimic_line("B", "Q?", "B.", image="IMG_2") + "\n")
    return "mimicit", "train", {"jsonl_path": str(path), "image_root": str(folder)}, path, folder / "IMG_1.jpg", \
        ("line 1 (id 'A')", "image_ids")


@pytest.mark.parametrize("write", [karpathy_file, vqav2_file, llava_file, mimicit_file], ids=lambda w: w.__name__)
@pytest.mark.parametrize("break_image, problem", [
    (Path.unlink, "image file not found"),
    (lambda path: path.write_bytes(b""), "image file is empty (0 bytes)"),
    (truncate, "image file is truncated"),
], ids=["missing", "zero-size", "truncated"])
def test_every_file_loader_names_a_bad_image_alike(write, break_image, problem, tmp_path):
    """The record checks of robustit.data.records hold in every file format, with the same
    message, at load or, for pixel data that does not decode, where the image is read; and
    --skip-bad leaves the record out whole at load."""
    source, split, options, data_file, image, (record, field) = write(tmp_path)
    kept = len(load_split(source, split, options))
    break_image(image)
    with pytest.raises(DataError) as caught:
        [sample.image for sample in load_split(source, split, options)]
    assert (Path(caught.value.path), caught.value.record, caught.value.field) == (data_file, record, field)
    assert problem in caught.value.problem
    report = LoadReport()
    assert len(load_split(source, split, options, skip_bad=True, report=report)) == report.loaded == kept - 1
    assert [(e.record, e.field) for e in report.skipped] == [(record, field)]


@pytest.mark.parametrize("write", [karpathy_file, vqav2_file, llava_file, mimicit_file], ids=lambda w: w.__name__)
def test_every_file_loader_refuses_a_file_that_is_not_utf8_whatever_skip_bad(write, tmp_path):
    source, split, options, data_file, _, _ = write(tmp_path)
    data_file.write_bytes(b"\xff" + data_file.read_bytes())
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xff at offset 0: invalid start byte\)"):
        load_split(source, split, options, skip_bad=True)
