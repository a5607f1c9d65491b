"""Loader for COCO / Flickr30k captions in the Karpathy-split JSON format.

The file is `{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", ...}],
"cocoid"? | "imgid"?}, ...], "dataset": ...}`; an image lives at
`image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr30k). Split "train"
includes Karpathy's "restval" images. A sample holds a reference to its image file, decoded on
access (`robustit.data.image_ref`), so loading a split holds no pixels.

Instructions (`robustit.data.instructions`): with `instructions="pool"` (default) each sample
gets a captioning phrasing keyed by its id, from the held-out pool for split "test" and from
the training pool for every other split; `instructions="fixed"` gives every sample
`DEFAULT_CAPTION_INSTRUCTION`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import DEFAULT_CAPTION_INSTRUCTION, caption_instruction, check_instruction_mode
from robustit.data.records import RecordLoader, read_json, text_field
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

    A bad record (wrong shape, missing or unreadable image, no non-empty caption, a duplicate
    id) raises `DataError` naming `json_path`, the record index and its filename, and the
    field (`robustit.data.records`, which says what loading checks and what reading an image);
    with `skip_bad=True` it is skipped and recorded in `report` (and logged). A file that is
    not a Karpathy JSON at all always raises. Ids are "<dataset>-<cocoid | imgid | filename>".
    `instructions` is "pool" (a phrasing per sample keyed by its id: held-out phrasings for
    split "test", training phrasings otherwise) or "fixed" (`DEFAULT_CAPTION_INSTRUCTION` for
    all).
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; known: {', '.join(KARPATHY_SPLITS)}")
    check_instruction_mode(instructions)
    json_path, image_root = Path(json_path), Path(image_root)
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(json_path, 'expected a JSON object with an "images" list (Karpathy split format)')
    dataset = str(data.get("dataset") or "karpathy")
    loader = RecordLoader(json_path, skip_bad, report, limit)
    for index, record in enumerate(data["images"]):
        if loader.full:
            break
        name = _record_name(index, record)
        with loader.record(name):
            if _record_split(json_path, name, record) in KARPATHY_SPLITS[split]:
                loader.add(_sample(loader, image_root, name, record, dataset, split, instructions), name)
    return loader.finish()


def _record_name(index: int, record: Any) -> str:
    filename = record.get("filename") if isinstance(record, dict) else None
    return f"record {index}" + (f" ({filename!r})" if isinstance(filename, str) and filename else "")


def _record_split(json_path: Path, name: str, record: Any) -> str:
    if not isinstance(record, dict):
        raise DataError(json_path, f"expected an object, got {type(record).__name__}", name)
    text_field(json_path, name, "filename", record.get("filename"))
    if not isinstance(record.get("sentences"), list):
        raise DataError(json_path, f"must be a list of sentences, got {record.get('sentences')!r}", name, "sentences")
    return text_field(json_path, name, "split", record.get("split"))


def _sample(
    loader: RecordLoader, image_root: Path, name: str, record: dict[str, Any], dataset: str, split: str,
    instructions: str,
) -> Sample:
    json_path = loader.path
    references = []
    for i, sentence in enumerate(record["sentences"]):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if isinstance(raw, str) and not raw.strip():
            continue
        references.append(text_field(json_path, name, f"sentences[{i}].raw", raw))
    if not references:
        raise DataError(json_path, "no non-empty caption", name, "sentences")
    filepath = record.get("filepath", "")
    if not isinstance(filepath, str):
        raise DataError(json_path, f"must be a string, got {filepath!r}", name, "filepath")
    image_path = os.path.join(image_root, filepath, record["filename"])
    image = loader.image(name, "filename", image_path)
    sample_id = f"{dataset}-{record.get('cocoid', record.get('imgid', record['filename']))}"
    return Sample(
        id=sample_id,
        image=image,
        instruction=caption_instruction(split, sample_id, instructions),
        response=references[0],
        references=references,
        task="caption",
        metadata={"source": dataset, "image_path": image_path, "split": record["split"]},
    )
