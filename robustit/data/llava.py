"""Loader for LLaVA's conversation JSON (LLaVA-Instruct-150K, the LLaVA-1.5 mix):

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\nWhat colour is the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}, ...]

Human and gpt turns alternate, human first. Every gpt turn is one sample: its response is the
gpt answer, its instruction the human question with the "<image>" placeholder removed, after
the earlier turns as context (`robustit.data.conversation`); ids are "llava-<id>-<k>" for the
k-th answer (from 0). The image lives at `image_root/<image>`; the samples hold a reference to
it, decoded on access (`robustit.data.image_ref`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robustit.data.conversation import context_instruction
from robustit.data.errors import DataError, LoadReport
from robustit.data.records import RecordLoader, read_json, text_field
from robustit.data.sample import Sample, check_task

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("human", "gpt")


def load_llava(
    split: str,
    json_path: str | Path,
    image_root: str | Path,
    task: str = "caption",
    skip_bad: bool = False,
    limit: int | None = None,
    report: LoadReport | None = None,
) -> list[Sample]:
    """The samples of the LLaVA conversation file `json_path` ("{split}" in it filled with
    `split`), the first `limit` of them; `task` is what they are scored as ("caption": free-form
    text by the caption metrics, "vqa": short answers by VQA accuracy).

    A bad record (wrong shape, no image, roles out of turn, an empty turn, a missing or
    unreadable image, a duplicate id) raises `DataError` naming the file, the record and the
    field (`robustit.data.records`); with `skip_bad=True` it is skipped whole and recorded in
    `report`. A file that is not a JSON list always raises.
    """
    check_task(task)
    path = Path(str(json_path).format(split=split))
    image_root = Path(image_root)
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError(path, "expected a JSON list of conversation records (LLaVA format)")
    loader = RecordLoader(path, skip_bad, report, limit)
    for index, record in enumerate(records):
        if loader.full:
            break
        name = f"record {index}"
        with loader.record(name):
            if not isinstance(record, dict):
                raise DataError(path, f"expected an object, got {type(record).__name__}", name)
            record_id = record.get("id")
            if not isinstance(record_id, int) or isinstance(record_id, bool):
                record_id = text_field(path, name, "id", record_id)
            name = f"record {index} (id {record_id!r})"
            if record.get("image") is None:
                raise DataError(path, "is missing (text-only records are not image-instruction pairs)", name, "image")
            image_path = image_root / text_field(path, name, "image", record["image"])
            pairs = _turns(path, name, record.get("conversations"))
            image = loader.image(name, "image", image_path)
            for k, (question, answer) in enumerate(pairs):
                loader.add(Sample(
                    id=f"llava-{record_id}-{k}",
                    image=image,
                    instruction=context_instruction(pairs[:k], question),
                    response=answer,
                    task=task,
                    metadata={"source": "llava", "record_id": record_id, "turn": k, "image_path": str(image_path)},
                ), name)
    return loader.finish()


def _turns(path: Path, name: str, conversations: Any) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a record's conversation."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError(path, f"must be a non-empty list of turns, got {conversations!r}", name, "conversations")
    texts = []
    for position, turn in enumerate(conversations):
        expected = ROLES[position % 2]
        field = f"conversations[{position}]"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            raise DataError(path, f"must be {{'from': {expected!r}, 'value': str}}, got {turn!r}", name, field)
        value = turn.get("value")
        texts.append(text_field(path, name, f"{field}.value",
                                value.replace(IMAGE_PLACEHOLDER, "") if isinstance(value, str) else value))
    if len(texts) % 2:
        raise DataError(path, "ends with a human turn that has no gpt answer", name, "conversations")
    return list(zip(texts[::2], texts[1::2]))
