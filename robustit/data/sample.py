"""The `Sample` record: one image-instruction-response triplet (DESIGN.md section 3)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from robustit.data.image_ref import ImageRef

TASKS = ("caption", "vqa")
IMAGE_SLOT = "_image"


def check_task(task: str) -> None:
    """Raise a ValueError naming the known tasks unless `task` is one of `TASKS`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


class _ImageField:
    """The descriptor behind `Sample.image`: set to a PIL image (kept as RGB) or an `ImageRef`,
    which it keeps in the sample's `IMAGE_SLOT`; read, a PIL RGB image, a reference decoded."""

    def __get__(self, sample: Sample | None, owner: type | None = None) -> Image.Image:
        if sample is None:
            raise AttributeError("Sample.image has no default")
        stored = sample.__dict__[IMAGE_SLOT]
        return stored.decode() if isinstance(stored, ImageRef) else stored

    def __set__(self, sample: Sample, value: Image.Image | ImageRef) -> None:
        if isinstance(value, Image.Image) and value.mode != "RGB":
            value = value.convert("RGB")
        sample.__dict__[IMAGE_SLOT] = value


@dataclass
class Sample:
    """One training or evaluation example.

    `image` is given as a PIL image, or as an `ImageRef` to a file whose pixels are decoded
    when `image` is read (`robustit.data.image_ref`, through a small cache: the file loaders'
    samples hold no pixels); either way `image` reads as a PIL RGB image. `references` holds every human reference: a
    caption's five (COCO), a VQA question's human answers (VQAv2 keeps ten); `response` is the
    one the model is tuned on. `task` says how a prediction is scored: "caption" (free-form
    text, by the caption metrics) or "vqa" (a short answer, by VQA accuracy;
    `robustit.eval.vqa`). An attack that rewrites a sample keeps the original response and
    references in `metadata["clean_response"]` / `metadata["clean_references"]` for
    evaluation only.
    """

    id: str
    image: Image.Image | ImageRef = _ImageField()  # type: ignore[assignment]
    instruction: str
    response: str
    references: list[str] = field(default_factory=list)
    task: str = "caption"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_task(self.task)
        if not self.references:
            self.references = [self.response]

    @property
    def image_source(self) -> Image.Image | ImageRef:
        """What `image` was set to: the in-memory image, or the reference it decodes."""
        return self.__dict__[IMAGE_SLOT]

    def replace(self, **changes: Any) -> "Sample":
        """A copy with `changes` applied; metadata is copied, never shared, and an image given
        by reference stays a reference."""
        changes.setdefault("metadata", dict(self.metadata))
        changes.setdefault("image", self.image_source)
        return dataclasses.replace(self, **changes)
