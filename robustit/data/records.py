"""Reading and checking the records of a data file: the helpers every loader uses, so that
each bad input gets the same error wherever it comes from (DESIGN.md section 3).

A loader reads its file with `read_json` (or `read_text`, and `parse_json` for each line of a
JSONL file), builds each record's samples inside `RecordLoader.record(name)` and takes each
field through a check: `text_field` for strings, `int_field` for integer ids,
`RecordLoader.image` for image files. A problem is a `DataError` naming the file, the record
and the field; `RecordLoader` stops the load at the first one, or, with `skip_bad`, leaves that
record out whole and counts it in its `LoadReport`. A file that cannot be read as a whole
(missing, not UTF-8, not JSON, the wrong shape) always stops the load.

Images are not decoded while loading: a sample holds an `ImageRef` to its file and decodes it
when its `image` is read (`robustit.data.image_ref`). Loading checks each file once however
many records name it (`robustit.data.images.check_image`): that it exists and is not empty,
one `stat`. The other image problems below show when the file is decoded, as an error naming
the record where its image is read (`Experiment.check` reads every image before the model is
built); with `skip_bad` loading decodes each file once (keeping no pixels), so that such a
record is skipped and counted too.

What each problem reads as (after "<file>, <record>, <field>: "):

    file not UTF-8                  not UTF-8 text (byte 0xff at offset 0: invalid start byte)
    file (or JSONL line) not JSON   not valid JSON: <why> (line L, column C)
    string field not a string       must be a string, got int 5
    string field empty or blank     is empty
    string with a lone surrogate    is not valid Unicode text (a lone surrogate '\\udc80' at position P)
    id field not an integer         must be an integer, got str '7'
    image file missing              image file not found: <path>
    image file of 0 bytes           image file is empty (0 bytes): <path>
    not an image, or 0 pixels wide  unreadable image <path> (not an image file PIL can read)
    truncated image                 unreadable image <path> (<PIL's reason, e.g. image file is truncated>)
    image over the pixel limit      image too large (Image size (N pixels) exceeds limit of M pixels;
                                    PIL.Image.MAX_IMAGE_PIXELS sets the limit): <path>
    16-bit or float image           image mode 'I;16' (16-bit or float samples) is not converted; save it as 8-bit RGB: <path>
    an id seen before in the file   duplicate id 'x' (first in <record>)

Greyscale, palette, CMYK, YCbCr and alpha images are converted to RGB (alpha dropped).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from robustit.data.errors import DataError, LoadReport
from robustit.data.image_ref import ImageRef
from robustit.data.images import check_image
from robustit.data.sample import Sample


def read_text(path: str | Path) -> str:
    """The UTF-8 text of `path`; a DataError naming it if it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = data[error.start : error.start + 1].hex()
        raise DataError(path, f"not UTF-8 text (byte 0x{bad} at offset {error.start}: {error.reason})") from None


def read_json(path: str | Path) -> Any:
    """The JSON document in `path`; a DataError naming it if it is not UTF-8 or not JSON."""
    return parse_json(path, read_text(path))


def parse_json(path: str | Path, text: str, record: str | None = None) -> Any:
    """The JSON document `text` (all of `path`, or its record `record`: a JSONL line); a
    DataError naming them if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})",
                        record) from None


def text_field(path: str | Path, record: str, field: str, value: Any) -> str:
    """`value` stripped of surrounding white space; a DataError unless it is a non-empty
    string that encodes as UTF-8 (JSON's \\u escapes can smuggle in lone surrogates)."""
    if not isinstance(value, str):
        raise DataError(path, f"must be a string, got {type(value).__name__} {value!r}", record, field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(path, f"is not valid Unicode text (a lone surrogate {value[error.start]!r} at position "
                              f"{error.start})", record, field) from None
    if not value.strip():
        raise DataError(path, "is empty", record, field)
    return value.strip()


def int_field(path: str | Path, record: str, field: str, value: Any) -> int:
    """`value`; a DataError unless it is an integer (a boolean is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, f"must be an integer, got {type(value).__name__} {value!r}", record, field)
    return value


class RecordLoader:
    """The samples of one data file, built record by record (see the module docstring).

    `record(name)` is the block that builds one record's samples and hands each to `add`; a
    DataError inside it takes back the samples it added and goes to `reject`, which stops the
    load, or with `skip_bad` leaves the record out and counts it in `report` (logged). `add`
    refuses an id seen before in this file. `full` says when `limit` samples are kept (None:
    never); `finish()` counts the samples kept (the first `limit`) in `report` and returns them."""

    def __init__(
        self, path: str | Path, skip_bad: bool, report: LoadReport | None, limit: int | None = None
    ) -> None:
        self.path = Path(path)
        self.skip_bad = skip_bad
        self.report = report if report is not None else LoadReport()
        self.limit = limit
        self.samples: list[Sample] = []
        self._first: dict[str, str] = {}
        self._checked: set[str] = set()

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.samples) >= self.limit

    @contextmanager
    def record(self, name: str) -> Iterator[None]:
        kept = len(self.samples)
        try:
            yield
        except DataError as error:
            for sample in self.samples[kept:]:
                if self._first.get(sample.id) == name:
                    del self._first[sample.id]
            del self.samples[kept:]
            self.reject(error)

    def image(self, record: str, field: str, image_path: str | Path) -> ImageRef:
        """A reference to the image file that `record` names in `field`, the file checked once
        for all the records that name it (`check_image`; decoded as well under `skip_bad`)."""
        image_path = str(image_path)
        if image_path not in self._checked:
            check_image(self.path, record, field, image_path, decode=self.skip_bad)
            self._checked.add(image_path)
        return ImageRef(image_path, self.path, record, field)

    def reject(self, error: DataError) -> None:
        """A bad record: raise `error`, or with `skip_bad` count it in the report."""
        if not self.skip_bad:
            raise error
        self.report.skip(error)

    def add(self, sample: Sample, record: str) -> None:
        """Keep `sample`, built from `record`; a DataError if its id came before."""
        first = self._first.setdefault(sample.id, record)
        if first != record:
            raise DataError(self.path, f"duplicate id {sample.id!r} (first in {first})", record, "id")
        self.samples.append(sample)

    def finish(self) -> list[Sample]:
        samples = self.samples if self.limit is None else self.samples[: self.limit]
        self.report.loaded += len(samples)
        return samples
