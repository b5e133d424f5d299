"""A bounded cache of rendered images, so no image is made twice while it is wanted.

Keyed by everything that decides an image's bytes: the stream, the fragment number (never
reused within a stream, and a stored fragment never changes), the frame's time in the
fragment, and the format, quality and size asked for. Least recently used images go first
once the cache holds `max_bytes`. The web viewer's thumbnail row, several clients asking
for the same range, and image generation all share it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

from kvslite.server import metrics

DEFAULT_MB = 64


class ImageKey(NamedTuple):
    stream_arn: str
    fragment_number: str
    offset_ms: int  # the frame's presentation time within the fragment
    image_format: str
    quality: int
    width: int | None
    height: int | None


class ImageCache:
    def __init__(self, max_bytes: int = DEFAULT_MB << 20):
        self.max_bytes = max_bytes
        self.size = 0  # bytes of images held
        self._images: OrderedDict[ImageKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: ImageKey) -> bytes | None:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
        metrics.IMAGE_CACHE.labels("hit" if image is not None else "miss").inc()
        return image

    def put(self, key: ImageKey, image: bytes) -> None:
        if len(image) > self.max_bytes:
            return  # would evict everything for one image
        with self._lock:
            previous = self._images.pop(key, None)
            if previous is not None:
                self.size -= len(previous)
            self._images[key] = image
            self.size += len(image)
            while self.size > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self.size -= len(evicted)
            metrics.IMAGE_CACHE_BYTES.set(self.size)

    def __len__(self) -> int:
        return len(self._images)
