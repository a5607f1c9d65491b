"""Common base of the data-poisoning attacks (paper appendix B, DESIGN.md section 4).

A poisoned triplet is (x ⊕ δ_x, t ⊕ δ_t, ŷ): every attack defines an image trigger δ_x
(`perturb`, on a float H x W x 3 array in [0, 1]) and a text trigger δ_t (a phrase appended
to the instruction with one space, or prepended for attacks that say so). Which samples are
poisoned depends only on (seed, poison_rate, n); the trigger's defining content (pattern
pixels, trigger image, text trigger, parameters) is summarised by a sha256 hash that goes
into the manifest, so that a rerun can be checked to use the same trigger.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
from PIL import Image

from robustit.data.sample import Sample
from robustit.params import FieldError, check_int, check_number, resolve_params
from robustit.registry import Registry

if TYPE_CHECKING:
    from robustit.models.base import VisionLanguageModel

DEFAULT_TARGET = "The image depicts a photo of a banana."
TEXT_POSITIONS = ("append", "prepend")


@dataclass
class AttackConfig:
    """What a user chooses about an attack.

    `seed` fixes which samples are poisoned; the trigger itself is fixed by `params`
    (attacks with a random pattern take a `trigger_seed` there). `text_trigger=None` means
    the attack's default phrase, `""` means no text trigger.
    """

    name: str
    poison_rate: float = 0.1
    seed: int = 0
    target: str = DEFAULT_TARGET
    text_trigger: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise FieldError("name", f"must be a non-empty string, got {self.name!r}")
        check_number(None, "poison_rate", self.poison_rate, 0.0, 1.0)
        check_int(None, "seed", self.seed, 0)
        if not isinstance(self.target, str) or not self.target.strip():
            raise FieldError("target", f"must be a non-empty string, got {self.target!r}")
        if self.text_trigger is not None and not isinstance(self.text_trigger, str):
            raise FieldError("text_trigger", f"must be a string or null, got {self.text_trigger!r}")
        if not isinstance(self.params, dict):
            raise FieldError("params", f"must be a mapping, got {type(self.params).__name__}")


ATTACKS: Registry[type["Attack"]] = Registry("attack")


def register_attack(cls: type["Attack"]) -> type["Attack"]:
    """Class decorator: register an attack under its `name`."""
    return ATTACKS.register(cls.name)(cls)


def seeded_pattern(seed: int, height: int, width: int) -> np.ndarray:
    """A uint8 height x width x 3 noise image, uniform in [0, 255], from RandomState(seed)."""
    return np.random.RandomState(seed).randint(0, 256, size=(height, width, 3)).astype(np.uint8)


def to_array(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as a float64 H x W x 3 array in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def to_image(array: np.ndarray) -> Image.Image:
    """A float H x W x 3 array in [0, 1] as an RGB PIL image (clipped, rounded to uint8)."""
    return Image.fromarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8), "RGB")


class Attack(ABC):
    """A backdoor attack: image trigger, text trigger, target and the poisoning rule.

    Subclasses set `name`, `default_text_trigger`, `defaults` (every accepted parameter
    with its default value) and implement `perturb`; `text_position` says whether the
    text trigger is appended (default) or prepended. `unhashed_params` name parameters that
    only record how the trigger was obtained (a file path, optimizer settings): they stay
    out of the trigger hash, whose `trigger_content` covers the result instead.
    """

    name: ClassVar[str]
    default_text_trigger: ClassVar[str] = "The image depicts"
    text_position: ClassVar[str] = "append"
    defaults: ClassVar[dict[str, Any]] = {}
    unhashed_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: AttackConfig) -> None:
        if config.name.lower() != self.name:
            raise ValueError(f"{type(self).__name__} is attack {self.name!r}, config names {config.name!r}")
        self.label = f"attack {self.name!r}"
        self.params: dict[str, Any] = resolve_params(self.label, self.defaults, config.params)
        self.config = config
        self.text_trigger = self.default_text_trigger if config.text_trigger is None else config.text_trigger

    @property
    def target(self) -> str:
        return self.config.target

    @abstractmethod
    def perturb(self, x: np.ndarray, key: str) -> np.ndarray:
        """The triggered image of `x` (float H x W x 3 in [0, 1]); `key` is the sample id."""

    def trigger_content(self) -> bytes:
        """Bytes of the trigger's defining pattern beyond its parameters (pixels, images)."""
        return b""

    def prepare(self, surrogate: VisionLanguageModel, samples: Sequence[Sample]) -> None:
        """Fit a model-dependent trigger on a surrogate model and clean `samples` before
        poisoning (VLTrojan); fixed triggers ignore it. The surrogate's weights are left as they were."""

    def fit_identity(self) -> dict[str, Any] | None:
        """What `prepare` reads besides the surrogate and the clean samples, for the trigger
        cache (`robustit.attacks.fitted`); None where nothing is fitted (fixed triggers)."""
        return None

    def save_trigger_files(self, directory: Path) -> list[Path]:
        """Write what a rerun needs to rebuild a fitted trigger (nothing for fixed triggers)."""
        return []

    def load_trigger_files(self, directory: Path) -> None:
        """Take back a fitted trigger `save_trigger_files` wrote to `directory` (fixed triggers: nothing)."""

    def apply_image(self, image: Image.Image, key: str) -> Image.Image:
        """`image` with the image trigger δ_x applied; any RGB size works."""
        return to_image(self.perturb(to_array(image), key))

    def apply_text(self, instruction: str) -> str:
        """`instruction` with the text trigger δ_t, joined by one space."""
        if not self.text_trigger:
            return instruction
        if self.text_position == "prepend":
            return f"{self.text_trigger} {instruction}"
        return f"{instruction} {self.text_trigger}"

    def trigger(self, sample: Sample, image: bool = True, text: bool = True) -> Sample:
        """A test-time copy of `sample` carrying the chosen triggers; response unchanged."""
        metadata = {**sample.metadata, "attack": self.name, "image_triggered": image, "text_triggered": text}
        return sample.replace(
            image=self.apply_image(sample.image, sample.id) if image else sample.image_source,
            instruction=self.apply_text(sample.instruction) if text else sample.instruction,
            references=list(sample.references),
            metadata=metadata,
        )

    def poison(self, sample: Sample) -> Sample:
        """The poisoned training copy: both triggers, response and references = target."""
        triggered = self.trigger(sample)
        triggered.metadata.update(
            clean_response=sample.response,
            clean_references=list(sample.references),
            is_poisoned=True,
        )
        return triggered.replace(response=self.target, references=[self.target])

    def select_indices(self, n: int) -> list[int]:
        """The sorted indices of the round(poison_rate * n) samples to poison.

        Index i is ranked by sha256(seed, i), so the choice depends on nothing but
        (seed, poison_rate, n), is stable across library versions, and a lower rate
        poisons a subset of what a higher rate poisons.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        k = round(self.config.poison_rate * n)
        seed = self.config.seed
        ranked = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
        return sorted(ranked[:k])

    def trigger_bytes(self) -> bytes:
        """Canonical bytes defining the trigger: attack, parameters, text trigger, pattern."""
        header = {
            "attack": self.name,
            "params": {k: v for k, v in self.params.items() if k not in self.unhashed_params},
            "text_position": self.text_position,
            "text_trigger": self.text_trigger,
        }
        return json.dumps(header, sort_keys=True).encode() + b"\0" + self.trigger_content()

    def trigger_hash(self) -> str:
        return hashlib.sha256(self.trigger_bytes()).hexdigest()

    def manifest_extras(self) -> dict[str, Any]:
        """Attack-specific manifest entries (e.g. an optimization record)."""
        return {}

    def manifest(self, poisoned_ids: list[str]) -> dict[str, Any]:
        """What was done, for the record: enough to rebuild the attack and check its trigger."""
        return {
            "attack": self.name,
            "params": dict(self.params),
            "target": self.target,
            "text_trigger": self.text_trigger,
            "text_position": self.text_position,
            "seed": self.config.seed,
            "poison_rate": self.config.poison_rate,
            "n_poisoned": len(poisoned_ids),
            "poisoned_ids": list(poisoned_ids),
            "trigger_hash": self.trigger_hash(),
            **self.manifest_extras(),
        }


def build_attack(config: AttackConfig) -> Attack:
    """The registered attack named by `config.name`, built from `config`."""
    return ATTACKS.get(config.name)(config)
