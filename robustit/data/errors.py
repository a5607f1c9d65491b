"""Data-loading errors and the report of records skipped under `skip_bad` (DESIGN.md section 3):
a bad record gets an error naming its file and record, or is skipped and counted, never
silently dropped."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad data file or record; the message names the file and, when known, the record."""

    def __init__(self, path: str | Path, problem: str, record: str | None = None) -> None:
        self.path = str(path)
        self.record = record
        self.problem = problem
        where = self.path if record is None else f"{self.path}, {record}"
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
