"""Loader for LLaVA's conversation JSON (LLaVA-Instruct-150K, the LLaVA-1.5 mix):

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\nWhat colour is the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}, ...]

Human and gpt turns alternate, human first. Every gpt turn is one sample: its response is the
gpt answer, its instruction the human question with the "<image>" placeholder removed, after
the earlier turns as context (`robustit.data.conversation`); ids are "llava-<id>-<k>" for the
k-th answer (from 0). The image lives at `image_root/<image>` and is decoded once per file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from robustit.data.conversation import context_instruction
from robustit.data.errors import DataError, LoadReport
from robustit.data.records import ImageReader, keep_good, read_json
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
    unreadable image) raises `DataError` naming the file and the record; with `skip_bad=True`
    it is skipped and recorded in `report`. A file that is not a JSON list always raises.
    """
    check_task(task)
    path = Path(str(json_path).format(split=split))
    report = report if report is not None else LoadReport()
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError(path, "expected a JSON list of conversation records (LLaVA format)")
    read_image = ImageReader(path, Path(image_root))

    def build(index: int, record: Any) -> list[Sample]:
        name = f"record {index}"
        if not isinstance(record, dict):
            raise DataError(path, f"expected an object, got {type(record).__name__}", name)
        record_id = record.get("id")
        if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
            raise DataError(path, "missing or non-string 'id'", name)
        name = f"record {index} (id {record_id!r})"
        if not isinstance(record.get("image"), str):
            raise DataError(path, "missing or non-string 'image' (text-only records are not image-instruction pairs)", name)
        pairs = _turns(path, name, record.get("conversations"))
        image = read_image(record["image"], name)
        return [
            Sample(
                id=f"llava-{record_id}-{k}",
                image=image,
                instruction=context_instruction(pairs[:k], question),
                response=answer,
                task=task,
                metadata={"source": "llava", "record_id": record_id, "turn": k,
                          "image_path": str(read_image.root / record["image"])},
            )
            for k, (question, answer) in enumerate(pairs)
        ]

    samples = keep_good(records, build, skip_bad, report, limit)
    report.loaded += len(samples)
    return samples


def _turns(path: Path, name: str, conversations: Any) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a record's conversation."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError(path, "'conversations' must be a non-empty list", name)
    texts = []
    for position, turn in enumerate(conversations):
        expected = ROLES[position % 2]
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise DataError(path, f"conversations[{position}] must be {{'from': {expected!r}, 'value': str}}", name)
        text = turn["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        if not text:
            raise DataError(path, f"conversations[{position}] is empty", name)
        texts.append(text)
    if len(texts) % 2:
        raise DataError(path, "the conversation ends with a human turn that has no gpt answer", name)
    return list(zip(texts[::2], texts[1::2]))
