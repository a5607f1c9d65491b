"""Loader for MIMIC-IT-style instruction JSONL (Otter's MIMIC-IT fields, one instruction per line):

    {"id": "LA_00_0001", "instruction": "What is the dog doing?", "answer": "It is sleeping.",
     "image_ids": ["LA_IMG_000001"], "rel_ins_ids": ["LA_00_0000", "LA_00_0002"]}

Each line is one sample whose response is its `answer`: the tuned turn. Its earlier turns are
the records its `rel_ins_ids` name that come before it in the file, in file order; they become
context in its instruction (`robustit.data.conversation`); related records that come later
are later turns of the conversation and are not shown. The one image of `image_ids` lives at
`image_root / images.format(image_id=...)`; the sample holds a reference to it, decoded on
access (`robustit.data.image_ref`). Ids are "mimicit-<id>". Blank lines are ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robustit.data.conversation import context_instruction
from robustit.data.errors import DataError, LoadReport
from robustit.data.records import RecordLoader, parse_json, read_text, text_field
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
    an id seen before, a related id the file lacks, a missing or unreadable image) raises
    `DataError` naming the file, the line and the field (`robustit.data.records`); with
    `skip_bad=True` it is skipped and recorded in `report`. A file that is not UTF-8 always
    raises.
    """
    check_task(task)
    path = Path(str(jsonl_path).format(split=split))
    image_root = Path(image_root)
    loader = RecordLoader(path, skip_bad, report, limit)
    parsed: list[dict[str, Any]] = []
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if line.strip():
            with loader.record(f"line {number}"):
                parsed.append(_record(path, number, line))
    turns: dict[str, tuple[int, dict[str, Any]]] = {}
    for position, record in enumerate(parsed):
        turns.setdefault(record["id"], (position, record))
    for position, record in enumerate(parsed):
        if loader.full:
            break
        name = record["name"]
        with loader.record(name):
            earlier = []
            for related in record["rel_ins_ids"]:
                if related not in turns:
                    raise DataError(path, f"names {related!r}, which the file lacks", name, "rel_ins_ids")
                if turns[related][0] < position:
                    earlier.append(turns[related])
            context = [(r["instruction"], r["answer"]) for _, r in sorted(earlier, key=lambda item: item[0])]
            image_path = image_root / images.format(image_id=record["image_id"])
            loader.add(Sample(
                id=f"mimicit-{record['id']}",
                image=loader.image(name, "image_ids", image_path),
                instruction=context_instruction(context, record["instruction"]),
                response=record["answer"],
                task=task,
                metadata={"source": "mimicit", "record_id": record["id"], "context_turns": len(context),
                          "image_path": str(image_path)},
            ), name)
    return loader.finish()


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """One line as {"id", "instruction", "answer", "image_id", "rel_ins_ids", "name"}."""
    name = f"line {number}"
    record = parse_json(path, line, name)
    if not isinstance(record, dict):
        raise DataError(path, f"expected an object, got {type(record).__name__}", name)
    record_id = text_field(path, name, "id", record.get("id"))
    name = f"line {number} (id {record_id!r})"
    instruction = text_field(path, name, "instruction", record.get("instruction"))
    answer = text_field(path, name, "answer", record.get("answer"))
    image_ids = record.get("image_ids")
    if not isinstance(image_ids, list) or len(image_ids) != 1:
        raise DataError(path, f"must list exactly one image id (robustit tunes one image per sample), "
                              f"got {image_ids!r}", name, "image_ids")
    image_id = text_field(path, name, "image_ids[0]", image_ids[0])
    related = record.get("rel_ins_ids", [])
    if not isinstance(related, list) or not all(isinstance(r, str) for r in related):
        raise DataError(path, f"must be a list of instruction ids, got {related!r}", name, "rel_ins_ids")
    return {"id": record_id, "instruction": instruction, "answer": answer, "image_id": image_id,
            "rel_ins_ids": related, "name": name}
