"""What every file loader shares (DESIGN.md section 3): reading its JSON, reading the images its
records name, and keeping the good records while a bad one raises its `DataError` or, under
`skip_bad`, is skipped and counted in the `LoadReport`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from PIL import Image, UnidentifiedImageError

from robustit.data.errors import DataError, LoadReport

R = TypeVar("R")
T = TypeVar("T")


def read_json(path: Path) -> Any:
    """The parsed JSON file at `path`; a DataError naming it when it is not JSON (a missing
    file raises FileNotFoundError)."""
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"not valid JSON ({error})") from error


class ImageReader:
    """Decodes the images the records of `source` name, relative to `root`, once per path:
    records that share an image (the questions about one picture) share one decoded copy."""

    def __init__(self, source: Path, root: Path) -> None:
        self.source = source
        self.root = root
        self._images: dict[Path, Image.Image] = {}

    def __call__(self, relative: str | Path, record: str) -> Image.Image:
        """The RGB image at `root / relative`; a DataError naming the source, `record` and the
        path when the file is missing or unreadable."""
        path = self.root / relative
        if path not in self._images:
            try:
                with Image.open(path) as image:
                    self._images[path] = image.convert("RGB")
            except FileNotFoundError as error:
                raise DataError(self.source, f"image file not found: {path}", record) from error
            except (UnidentifiedImageError, OSError) as error:
                raise DataError(self.source, f"unreadable image {path} ({error})", record) from error
        return self._images[path]


def keep_good(
    records: Iterable[T],
    build: Callable[[int, T], list[R]],
    skip_bad: bool,
    report: LoadReport,
    limit: int | None = None,
) -> list[R]:
    """The concatenated `build(index, record)` of every record, in order, stopping once `limit`
    items are kept (None: all). A record whose build raises a DataError stops the load with it,
    or with `skip_bad` is skipped and recorded in `report`."""
    kept: list[R] = []
    for index, record in enumerate(records):
        if limit is not None and len(kept) >= limit:
            break
        try:
            kept.extend(build(index, record))
        except DataError as error:
            if not skip_bad:
                raise
            report.skip(error)
    return kept if limit is None else kept[:limit]
