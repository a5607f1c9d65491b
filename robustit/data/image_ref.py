"""Images referenced by file and decoded on access (DESIGN.md section 8: datasets larger than
memory).

An `ImageRef` names an image file and the data-file record that named it; `decode()` gives
the file's pixels as a PIL RGB image, with any problem (a file gone since loading, pixel data
that does not decode) a `DataError` naming the data file, the record and the field, as at
load time. Decoded images go through `DECODED`, one process-wide least-recently-used cache
bounded by the pixel bytes it holds, keyed by the file's path, size and modification time: the
records that name one file (the questions about one picture, the turns of one conversation)
get one decoded copy while it is cached, a file changed on disk is decoded again, and memory
stays bounded however many samples there are. `DECODED_CACHE_BYTES` (32 MiB: some 25 COCO
images, a few batches) is sized for such nearby reuse; a pass over files read once each gains
nothing from it (`robustit bench loading` measures both, docs/data.md).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from robustit.data.images import image_file_stat, open_image

DECODED_CACHE_BYTES = 32 * 2**20
RGB_PIXEL_BYTES = 4  # PIL stores an RGB pixel in 32 bits

CacheKey = tuple[str, int, int]


def _pixel_bytes(image: Image.Image) -> int:
    return image.width * image.height * RGB_PIXEL_BYTES


class DecodedImages:
    """A least-recently-used map file key -> decoded RGB image holding at most `max_bytes` of
    pixels (an image larger than that is not kept; 0 keeps none); `decodes` counts the files
    it decoded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.decodes = 0
        self._images: OrderedDict[CacheKey, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: ImageRef) -> Image.Image:
        """The decoded image of `ref`'s file, from the cache or decoded (and cached) now."""
        stat = image_file_stat(ref.source, ref.record, ref.field, ref.path)
        key = (ref.path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        image = open_image(ref.source, ref.record, ref.field, ref.path)
        with self._lock:
            self.decodes += 1
            self._put(key, image)
        return image

    def _put(self, key: CacheKey, image: Image.Image) -> None:
        if _pixel_bytes(image) > self.max_bytes or key in self._images:
            return
        self._images[key] = image
        self.held_bytes += _pixel_bytes(image)
        while self.held_bytes > self.max_bytes:
            _, evicted = self._images.popitem(last=False)
            self.held_bytes -= _pixel_bytes(evicted)


DECODED = DecodedImages(DECODED_CACHE_BYTES)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """The image file `path` that record `record` of data file `source` names in `field`."""

    path: str
    source: Path
    record: str
    field: str

    def decode(self) -> Image.Image:
        """The file's pixels as a PIL RGB image (through `DECODED`); a DataError naming the
        record where the file is gone or does not decode."""
        return DECODED.get(self)
