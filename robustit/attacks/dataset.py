"""Lazily attacked views of a sample sequence (map-style, as in BackdoorMBTI).

`PoisonedDataset` poisons the attack's seeded selection of indices when they are read and
returns every other sample untouched; `TriggeredView` puts the test-time triggers on every
sample. Both share one lazy mechanism.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from robustit.attacks.base import Attack
from robustit.data.sample import Sample


class _LazyAttackedView(Dataset):
    """Samples whose selected indices are transformed on access (optionally cached)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Sample], Sample],
        indices: Sequence[int] | None,
        cache: bool,
    ) -> None:
        self.samples = samples
        self._transform = transform
        self._indices = None if indices is None else frozenset(indices)
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        if self._indices is not None and index not in self._indices:
            return self.samples[index]
        if self._cache is None:
            return self._transform(self.samples[index])
        if index not in self._cache:
            self._cache[index] = self._transform(self.samples[index])
        return self._cache[index]


class PoisonedDataset(_LazyAttackedView):
    """`samples` with `attack` poisoning round(poison_rate * n) seeded indices on access."""

    def __init__(self, samples: Sequence[Sample], attack: Attack) -> None:
        self.attack = attack
        self.poisoned_indices = attack.select_indices(len(samples))
        super().__init__(samples, attack.poison, self.poisoned_indices, cache=True)

    @property
    def poisoned_ids(self) -> list[str]:
        return [self.samples[i].id for i in self.poisoned_indices]

    def manifest(self) -> dict[str, Any]:
        return {**self.attack.manifest(self.poisoned_ids), "n_samples": len(self)}


class TriggeredView(_LazyAttackedView):
    """Every sample of `samples` with the chosen test-time triggers, response unchanged."""

    def __init__(self, samples: Sequence[Sample], attack: Attack, image: bool = True, text: bool = True) -> None:
        self.attack = attack
        super().__init__(samples, partial(attack.trigger, image=image, text=text), None, cache=False)
