"""Data-loading errors and the report of records skipped under `skip_bad` (DESIGN.md section 3):
a bad record gets an error naming its file, record and field, or is skipped and counted,
never silently dropped. `robustit.data.records` holds the checks that raise them."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad data file or record; the message names the file and, when known, the record and
    the field: "<file>, <record>, <field>: <problem>"."""

    def __init__(self, path: str | Path, problem: str, record: str | None = None, field: str | None = None) -> None:
        self.path = str(path)
        self.record = record
        self.field = field
        self.problem = problem
        where = ", ".join(part for part in (self.path, record, field) if part is not None)
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadReport:
    """What a loader kept and skipped; pass one in to learn how many bad records `skip_bad` dropped."""

    loaded: int = 0
    skipped: list[DataError] = field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def skip(self, error: DataError) -> None:
        self.skipped.append(error)
        logger.warning("skipping bad record: %s", error)

    def as_dict(self) -> dict[str, Any]:
        """The counts and each skipped record's error (metrics.json's "data")."""
        return {"loaded": self.loaded, "skipped": self.skipped_count, "skipped_records": [str(e) for e in self.skipped]}
