"""Loader for MIMIC-IT-style instruction JSONL (Otter's MIMIC-IT fields, one instruction per line):

    {"id": "LA_00_0001", "instruction": "What is the dog doing?", "answer": "It is sleeping.",
     "image_ids": ["LA_IMG_000001"], "rel_ins_ids": ["LA_00_0000", "LA_00_0002"]}

Each line is one sample whose response is its `answer`: the tuned turn. Its earlier turns are
the records its `rel_ins_ids` name that come before it in the file, in file order; they become
context in its instruction (`robustit.data.conversation`); related records that come later
are later turns of the conversation and are not shown. The one image of `image_ids` lives at
`image_root / images.format(image_id=...)`. Ids are "mimicit-<id>". Blank lines are ignored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustit.data.conversation import context_instruction
from robustit.data.errors import DataError, LoadReport
from robustit.data.records import ImageReader, keep_good
from robustit.data.sample import Sample, check_task

IMAGE_FILE = "{image_id}.jpg"


def load_mimicit(
    split: str,
    jsonl_path: str | Path,
    image_root: str | Path,
    images: str = IMAGE_FILE,
    task: str = "caption",
    skip_bad: bool = False,
    limit: int | None = None,
    report: LoadReport | None = None,
) -> list[Sample]:
    """The samples of the JSONL file `jsonl_path` ("{split}" in it filled with `split`), the
    first `limit` of them; `task` as in `robustit.data.llava.load_llava`.

    A bad line (not JSON, wrong shape, an empty instruction or answer, not exactly one image,
    an id seen before, a related id the file lacks, a missing or unreadable image) raises `DataError` naming the
    file and the line; with `skip_bad=True` it is skipped and recorded in `report`.
    """
    check_task(task)
    path = Path(str(jsonl_path).format(split=split))
    report = report if report is not None else LoadReport()
    with path.open(encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(handle, 1) if line.strip()]
    seen: set[str] = set()

    def parse(_: int, line: tuple[int, str]) -> list[dict[str, Any]]:
        record = _record(path, *line)
        if record["id"] in seen:
            raise DataError(path, f"duplicate id {record['id']!r}", record["name"])
        seen.add(record["id"])
        return [record]

    parsed = keep_good(lines, parse, skip_bad, report)
    turns = {record["id"]: (position, record) for position, record in enumerate(parsed)}
    read_image = ImageReader(path, Path(image_root))

    def build(position: int, record: dict[str, Any]) -> list[Sample]:
        earlier = []
        for related in record["rel_ins_ids"]:
            if related not in turns:
                raise DataError(path, f"rel_ins_ids names {related!r}, which the file lacks", record["name"])
            if turns[related][0] < position:
                earlier.append(turns[related])
        context = [(r["instruction"], r["answer"]) for _, r in sorted(earlier, key=lambda item: item[0])]
        image_name = images.format(image_id=record["image_ids"][0])
        return [Sample(
            id=f"mimicit-{record['id']}",
            image=read_image(image_name, record["name"]),
            instruction=context_instruction(context, record["instruction"]),
            response=record["answer"],
            task=task,
            metadata={"source": "mimicit", "record_id": record["id"], "context_turns": len(context),
                      "image_path": str(read_image.root / image_name)},
        )]

    samples = keep_good(parsed, build, skip_bad, report, limit)
    report.loaded += len(samples)
    return samples


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """One line as {"id", "instruction", "answer", "image_ids", "rel_ins_ids", "name"}."""
    name = f"line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error})", name) from error
    if not isinstance(record, dict):
        raise DataError(path, f"expected an object, got {type(record).__name__}", name)
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise DataError(path, "missing or non-string 'id'", name)
    name = f"line {number} (id {record['id']!r})"
    for key in ("instruction", "answer"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(path, f"missing, non-string or empty {key!r}", name)
    image_ids = record.get("image_ids")
    if not isinstance(image_ids, list) or len(image_ids) != 1 or not isinstance(image_ids[0], str):
        raise DataError(path, "'image_ids' must list exactly one image id (robustit tunes one image per sample)", name)
    related = record.get("rel_ins_ids", [])
    if not isinstance(related, list) or not all(isinstance(r, str) for r in related):
        raise DataError(path, "'rel_ins_ids' must be a list of instruction ids", name)
    return {"id": record["id"], "instruction": record["instruction"].strip(), "answer": record["answer"].strip(),
            "image_ids": image_ids, "rel_ins_ids": related, "name": name}
