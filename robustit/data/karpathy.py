"""Loader for COCO / Flickr30k captions in the Karpathy-split JSON format.

The file is `{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", ...}],
"cocoid"? | "imgid"?}, ...], "dataset": ...}`; an image lives at
`image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr30k). Split "train"
includes Karpathy's "restval" images.

Instructions (`robustit.data.instructions`): with `instructions="pool"` (default) each sample
gets a captioning phrasing keyed by its id, from the held-out pool for split "test" and from
the training pool for every other split; `instructions="fixed"` gives every sample
`DEFAULT_CAPTION_INSTRUCTION`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import DEFAULT_CAPTION_INSTRUCTION, caption_instruction, check_instruction_mode
from robustit.data.records import ImageReader, keep_good, read_json
from robustit.data.sample import Sample

__all__ = ["DEFAULT_CAPTION_INSTRUCTION", "KARPATHY_SPLITS", "load_karpathy"]

KARPATHY_SPLITS: dict[str, frozenset[str]] = {
    "train": frozenset({"train", "restval"}),
    "val": frozenset({"val"}),
    "test": frozenset({"test"}),
    "restval": frozenset({"restval"}),
    "all": frozenset({"train", "restval", "val", "test"}),
}


def load_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split: str = "test",
    instructions: str = "pool",
    skip_bad: bool = False,
    limit: int | None = None,
    report: LoadReport | None = None,
) -> list[Sample]:
    """Samples of one Karpathy split: `response` is the first caption, `references` all of them.

    A bad record (wrong shape, missing or unreadable image, no non-empty caption) raises
    `DataError` naming `json_path`, the record index and its filename; with `skip_bad=True`
    it is skipped and recorded in `report` (and logged). A file that is not a Karpathy JSON
    at all always raises. Ids are "<dataset>-<cocoid | imgid | filename>". `instructions` is
    "pool" (a phrasing per sample keyed by its id: held-out phrasings for split "test", training
    phrasings otherwise) or "fixed" (`DEFAULT_CAPTION_INSTRUCTION` for all).
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; known: {', '.join(KARPATHY_SPLITS)}")
    check_instruction_mode(instructions)
    json_path, image_root = Path(json_path), Path(image_root)
    report = report if report is not None else LoadReport()
    data = _read_json(json_path)
    dataset = str(data.get("dataset") or "karpathy")
    read_image = ImageReader(json_path, image_root)

    def build(index: int, record: Any) -> list[Sample]:
        if _record_split(json_path, index, record) not in KARPATHY_SPLITS[split]:
            return []
        return [_sample(json_path, read_image, index, record, dataset, split, instructions)]

    samples = keep_good(data["images"], build, skip_bad, report, limit)
    report.loaded += len(samples)
    return samples


def _read_json(json_path: Path) -> dict[str, Any]:
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(json_path, 'expected a JSON object with an "images" list (Karpathy split format)')
    return data


def _record_name(index: int, record: Any) -> str:
    filename = record.get("filename") if isinstance(record, dict) else None
    return f"record {index}" + (f" ({filename!r})" if filename else "")


def _record_split(json_path: Path, index: int, record: Any) -> str:
    if not isinstance(record, dict):
        raise DataError(json_path, f"expected an object, got {type(record).__name__}", _record_name(index, record))
    for key, kind in (("filename", str), ("split", str), ("sentences", list)):
        if not isinstance(record.get(key), kind):
            raise DataError(json_path, f"missing or non-{kind.__name__} {key!r}", _record_name(index, record))
    return record["split"]


def _sample(
    json_path: Path, read_image: ImageReader, index: int, record: dict[str, Any], dataset: str, split: str,
    instructions: str,
) -> Sample:
    name = _record_name(index, record)
    references = [_raw(json_path, name, sentence) for sentence in record["sentences"]]
    references = [text for text in references if text]
    if not references:
        raise DataError(json_path, "no non-empty caption", name)
    relative = Path(record.get("filepath", "")) / record["filename"]
    rgb = read_image(relative, name)
    sample_id = f"{dataset}-{record.get('cocoid', record.get('imgid', record['filename']))}"
    return Sample(
        id=sample_id,
        image=rgb,
        instruction=caption_instruction(split, sample_id, instructions),
        response=references[0],
        references=references,
        task="caption",
        metadata={"source": dataset, "image_path": str(read_image.root / relative), "split": record["split"]},
    )


def _raw(json_path: Path, name: str, sentence: Any) -> str:
    if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
        raise DataError(json_path, 'every sentence needs a string "raw" caption', name)
    return sentence["raw"].strip()
