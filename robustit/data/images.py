"""Opening the image files that data records name, each problem a `DataError` naming the data
file, the record and the field (the messages are listed in `robustit.data.records`).

`open_image` decodes a file. `check_image` looks at one without keeping any pixels: one `stat`
(the file exists and is not empty), or, with `decode`, every pixel as well, which is the one
way to find a file that is not an image or is truncated inside its pixel data.
"""
from __future__ import annotations

import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from robustit.data.errors import DataError

UNCONVERTED_MODES = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def image_file_stat(path: str | Path, record: str, field: str, image_path: str | Path) -> os.stat_result:
    """`os.stat` of the image file `image_path` that record `record` of data file `path` names
    in `field`; a DataError where it is missing, not a file or empty."""
    try:
        result = os.stat(image_path)
    except (FileNotFoundError, NotADirectoryError):
        result = None
    if result is None or not stat.S_ISREG(result.st_mode):
        raise DataError(path, f"image file not found: {image_path}", record, field)
    if result.st_size == 0:
        raise DataError(path, f"image file is empty (0 bytes): {image_path}", record, field)
    return result


@contextmanager
def _opened(path: str | Path, record: str, field: str, image_path: str | Path) -> Iterator[Image.Image]:
    """The image file `image_path` opened (header read, pixels not yet), with every problem,
    inside the block too, raised as a DataError naming data file `path`, `record` and `field`."""
    def fail(problem: str) -> DataError:
        return DataError(path, problem, record, field)

    image_file_stat(path, record, field, image_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(image_path) as image:
                if image.mode in UNCONVERTED_MODES:
                    raise fail(f"image mode {image.mode!r} (16-bit or float samples) is not converted; save it as 8-bit "
                               f"RGB: {image_path}")
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        pixels = str(error).split(",")[0]
        raise fail(f"image too large ({pixels}; PIL.Image.MAX_IMAGE_PIXELS sets the limit): {image_path}") from None
    except UnidentifiedImageError:
        raise fail(f"unreadable image {image_path} (not an image file PIL can read)") from None
    except OSError as error:
        raise fail(f"unreadable image {image_path} ({error})") from None


def open_image(path: str | Path, record: str, field: str, image_path: str | Path, mode: str = "RGB") -> Image.Image:
    """The image file `image_path` that record `record` of data file `path` names in `field`,
    decoded and converted to `mode`."""
    with _opened(path, record, field, image_path) as image:
        return image.convert(mode)


def check_image(path: str | Path, record: str, field: str, image_path: str | Path, decode: bool = False) -> None:
    """Raise the DataError `open_image` would for the file `image_path` where it is missing or
    empty; with `decode`, for any problem, by decoding it (the pixels are dropped)."""
    if not decode:
        image_file_stat(path, record, field, image_path)
        return
    with _opened(path, record, field, image_path) as image:
        image.load()
