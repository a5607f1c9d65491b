"""The `Sample` record: one image-instruction-response triplet (DESIGN.md section 3)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

TASKS = ("caption", "vqa")


def check_task(task: str) -> None:
    """Raise a ValueError naming the known tasks unless `task` is one of `TASKS`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


@dataclass
class Sample:
    """One training or evaluation example.

    `references` holds every human reference: a caption's five (COCO), a VQA question's human
    answers (VQAv2 keeps ten); `response` is the one the model is tuned on. `task` says how a
    prediction is scored: "caption" (free-form text, by the caption metrics) or "vqa" (a short
    answer, by VQA accuracy; `robustit.eval.vqa`). An attack that rewrites a sample keeps the original
    response and references in `metadata["clean_response"]` / `metadata["clean_references"]`
    for evaluation only.
    """

    id: str
    image: Image.Image
    instruction: str
    response: str
    references: list[str] = field(default_factory=list)
    task: str = "caption"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.image.mode != "RGB":
            self.image = self.image.convert("RGB")
        if not self.references:
            self.references = [self.response]

    def replace(self, **changes: Any) -> "Sample":
        """A copy with `changes` applied; metadata is copied, never shared."""
        changes.setdefault("metadata", dict(self.metadata))
        return dataclasses.replace(self, **changes)
