"""Typed name -> class registries, as in TrojanZoo: attacks, defenses and model families
register themselves by name and are built from a config by that name."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a lowercase name to a class (or builder) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def decorate(entry: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = entry
            return entry

        return decorate

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of `package` (its `__path__` is `path`), so that each module's
    registration decorators run: a new attack, defense or model family is one new module."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
