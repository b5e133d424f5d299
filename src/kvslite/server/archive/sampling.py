"""GetImages: sample times -> the fragment covering each -> the frame on screen -> an image.

For sample time t the image is the last frame with timestamp <= t in the
fragment whose span [start, start + duration) contains t. Each fragment a page
needs is read once, up to its last needed frame, and decoded once, in parallel
across fragments, leaving out the disposable pictures no wanted one depends on;
images are encoded in the same worker.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import logging
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from kvslite.server import metrics
from kvslite.server.archive.fragments import Archive, FragmentGone, FrameEntry, unpack_frames
from kvslite.server.archive.image_cache import ImageCache, ImageKey
from kvslite.server.api_errors import CLIENT_LIMIT_EXCEEDED, ApiError, invalid
from kvslite.media.decode import DecodeError, decode_wanted
from kvslite.media.images import encode_image
from kvslite.media.limits import MAX_FRAGMENT_SPAN_MS, video_track
from kvslite.media.nal import skippable
from kvslite.server.store.metadata import Clock, Fragment

log = logging.getLogger("kvslite.images")

DEFAULT_JPEG_QUALITY = 80


@dataclass(frozen=True)
class ImageRequest:
    """Everything that decides which images a GetImages call returns (not its paging)."""

    stream_arn: str
    clock: Clock
    start_ms: int
    end_ms: int
    interval_ms: int
    image_format: str  # "JPEG" | "PNG"
    quality: int
    width: int | None
    height: int | None

    def sample_count(self) -> int:
        return (self.end_ms - self.start_ms) // self.interval_ms + 1

    def sample_time(self, index: int) -> int:
        return self.start_ms + index * self.interval_ms


def needed_frames(frames: list[FrameEntry], wanted: set[int]) -> list[FrameEntry]:
    """The frames (in decode order, up to the last wanted) a decode of the `wanted` pts
    must be fed: all but the disposable pictures nobody asked for, which no wanted picture
    depends on (media/nal.py). The images are bit-identical to a full decode's."""
    top_layer = max(e.role.temporal_id for e in frames if e.offset_ms in wanted)
    return [e for e in frames
            if e.offset_ms in wanted or not skippable(e.role, top_layer)]


def check_sampling_interval(interval_ms: int, minimum_ms: int) -> None:
    if interval_ms < minimum_ms:
        raise invalid(f"SamplingInterval must be at least {minimum_ms} ms on this server, "
                      f"got {interval_ms}")


def jpeg_quality(format_config: dict | None) -> int:
    """FormatConfig's JPEGQuality (1-100), else the default."""
    quality = (format_config or {}).get("JPEGQuality", str(DEFAULT_JPEG_QUALITY))
    if not quality.isdigit() or not 1 <= int(quality) <= 100:
        raise invalid(f"FormatConfig JPEGQuality must be an integer from 1 to 100, "
                      f"got {quality!r}")
    return int(quality)


@dataclass
class Image:
    time_ms: int
    content: bytes | None = None
    error: str | None = None  # "NO_MEDIA" | "MEDIA_ERROR"


@dataclass
class _Group:
    """The samples one fragment serves, with the frame (index entry) each one shows."""

    fragment: Fragment
    frames: list[FrameEntry]  # the fragment's video frames, in decode order
    samples: list[tuple[int, FrameEntry | None]]  # (sample index, frame shown or None)


class ImageSampler:
    def __init__(self, archive: Archive, *, workers: int | None = None,
                 max_requests: int = 8, page_bytes: int = 16 << 20,
                 cache: ImageCache | None = None):
        self.archive = archive
        self.cache = cache  # rendered images, so none is made twice (None: no cache)
        self.workers = workers or len(os.sched_getaffinity(0)) or 2  # the cores we may use
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="kvslite-decode")
        self.slots = threading.BoundedSemaphore(max_requests)
        self.page_bytes = page_bytes
        self.token_key = archive.secret("get-images-next-token")

    # -- paging tokens ------------------------------------------------------------------

    def _mac(self, request: ImageRequest, index: int) -> bytes:
        fields = {**asdict(request), "clock": request.clock.value}
        message = json.dumps(fields, sort_keys=True).encode() + struct.pack(">Q", index)
        return hmac.new(self.token_key, message, hashlib.sha256).digest()[:16]

    def token_for(self, request: ImageRequest, index: int) -> str:
        return base64.b64encode(struct.pack(">Q", index) + self._mac(request, index)).decode()

    def index_from(self, request: ImageRequest, token: str) -> int:
        try:
            raw = base64.b64decode(token, validate=True)
        except ValueError:
            raw = b""
        if len(raw) == 24:
            index = struct.unpack(">Q", raw[:8])[0]
            if hmac.compare_digest(raw[8:], self._mac(request, index)) and \
                    index < request.sample_count():
                return index
        raise invalid("NextToken is invalid, or was issued for a different GetImages request")

    # -- one page -------------------------------------------------------------------------

    def page(self, request: ImageRequest, first: int, max_results: int
             ) -> tuple[list[Image], int | None]:
        """Images for samples first, first+1, ...; returns them and the next index (or None)."""
        if not self.slots.acquire(blocking=False):
            raise ApiError(CLIENT_LIMIT_EXCEEDED,
                           "Too many GetImages requests in flight; retry shortly")
        try:
            return self._page(request, first, max_results)
        finally:
            self.slots.release()

    def render(self, request: ImageRequest, page_size: int = 100) -> list[Image]:
        """Every image of `request`, page by page as GetImages would return them; waits
        for a free request slot instead of refusing (background work, not a client)."""
        images: list[Image] = []
        first: int | None = 0
        with self.slots:
            while first is not None:
                page, first = self._page(request, first, page_size)
                images += page
        return images

    def _page(self, request: ImageRequest, first: int, max_results: int):
        last = min(request.sample_count(), first + max_results) - 1
        images = {i: Image(request.sample_time(i), error="NO_MEDIA")
                  for i in range(first, last + 1)}
        groups = self._plan(request, first, last)
        cut = last + 1
        size = 0
        wave = self.workers * 2
        for start in range(0, len(groups), wave):
            batch = groups[start:start + wave]
            threads = max(1, self.workers // len(batch))
            results = self.pool.map(lambda g: self._render(request, g, threads), batch)
            for group, rendered in zip(batch, results):
                for index, _ in group.samples:
                    images[index] = rendered.get(index) or Image(request.sample_time(index),
                                                                 error="MEDIA_ERROR")
                    size += len(images[index].content or b"")
            if size > self.page_bytes and start + wave < len(groups):
                # keep the response bounded: end the page before the first unrendered sample
                cut = min(index for g in groups[start + wave:] for index, _ in g.samples)
                break
        page = [images[i] for i in range(first, cut)]
        return page, (cut if cut < request.sample_count() else None)

    def _plan(self, request: ImageRequest, first: int, last: int) -> list[_Group]:
        """Assign each sample to the fragment covering it and the frame it shows."""
        fragments = self.archive.overlapping(request.stream_arn, request.clock,
                                             request.sample_time(first),
                                             request.sample_time(last))
        starts = [f.start_ms(request.clock) for f in fragments]
        groups: dict[int, _Group] = {}
        frames: dict[int, list[FrameEntry]] = {}
        for index in range(first, last + 1):
            t = request.sample_time(index)
            fragment = _covering(fragments, starts, t)
            if fragment is None:
                continue  # NO_MEDIA
            if fragment.seq not in frames:
                frames[fragment.seq] = self._video_frames(fragment)
            shown = _frame_shown(frames[fragment.seq], t - fragment.start_ms(request.clock))
            group = groups.setdefault(fragment.seq,
                                      _Group(fragment, frames[fragment.seq], []))
            group.samples.append((index, shown))
        return list(groups.values())

    def _video_frames(self, fragment: Fragment) -> list[FrameEntry]:
        track = video_track(self.archive.tracks(fragment.header_id))
        if track is None:
            return []
        return [e for e in unpack_frames(fragment.frames) if e.track == track.number]

    def _render(self, request: ImageRequest, group: _Group, threads: int) -> dict[int, Image]:
        """The images one fragment serves: from the cache, else decoded (once) and encoded."""
        fragment = group.fragment
        samples = [(index, frame) for index, frame in group.samples if frame is not None]
        if len(samples) < len(group.samples):
            return {}  # no video track in this fragment: MEDIA_ERROR
        keys = {frame.offset_ms: self._key(request, fragment, frame.offset_ms)
                for _, frame in samples}
        encoded = {} if self.cache is None else {
            offset: image for offset, key in keys.items()
            if (image := self.cache.get(key)) is not None}
        missing = set(keys) - set(encoded)
        if missing:
            try:
                made = self._decode_and_encode(request, group, missing, threads)
            except FragmentGone:  # retention removed it after the page was planned
                return {index: Image(request.sample_time(index), error="NO_MEDIA")
                        for index, _ in group.samples}
            if made is None:
                return {}  # MEDIA_ERROR (logged)
            encoded.update(made)
            if self.cache is not None:
                for offset, image in made.items():
                    self.cache.put(keys[offset], image)
        return {index: Image(request.sample_time(index), content=encoded[frame.offset_ms])
                for index, frame in samples}

    @staticmethod
    def _key(request: ImageRequest, fragment: Fragment, offset_ms: int) -> ImageKey:
        return ImageKey(request.stream_arn, fragment.number, offset_ms, request.image_format,
                        request.quality, request.width, request.height)

    def _decode_and_encode(self, request: ImageRequest, group: _Group, wanted: set[int],
                           threads: int):
        """{offset: image bytes} for the `wanted` frame times of the group's fragment; None
        if it cannot be decoded. Raises FragmentGone if retention removed it meanwhile."""
        fragment, frames = group.fragment, group.frames
        try:
            track = video_track(self.archive.tracks(fragment.header_id))
            last = max(i for i, e in enumerate(frames) if e.offset_ms in wanted)
            needed = frames[last].payload_offset + frames[last].size
            blob = self.archive.cluster_bytes(fragment, needed)
            if len(blob) < needed:
                raise OSError(f"stored fragment is truncated ({len(blob)} < {needed} bytes)")
            packets = [(e.offset_ms, blob[e.payload_offset:e.payload_offset + e.size])
                       for e in needed_frames(frames[: last + 1], wanted)]
            started = time.monotonic()
            decoded = decode_wanted(track.codec_id, track.codec_private, packets, wanted,
                                    threads=threads)
            encoded = {
                offset: encode_image(frame, request.image_format, quality=request.quality,
                                     width=request.width, height=request.height)
                for offset, frame in decoded.items()
            }
            metrics.DECODE_SECONDS.observe(time.monotonic() - started)
        except FragmentGone:
            raise
        except (DecodeError, OSError, ValueError) as e:
            log.warning("fragment %s cannot be decoded: %s", fragment.number, e)
            return None
        except Exception:  # a bug must not fail the whole page; the log keeps the trace
            log.exception("rendering fragment %s failed", fragment.number)
            return None
        return encoded


def _covering(fragments: list[Fragment], starts: list[int], t: int) -> Fragment | None:
    """The latest-starting fragment whose span contains t."""
    i = bisect.bisect_right(starts, t) - 1
    while i >= 0 and t - starts[i] < MAX_FRAGMENT_SPAN_MS:
        if t < starts[i] + fragments[i].duration_ms:
            return fragments[i]
        i -= 1
    return None


def _frame_shown(frames: list[FrameEntry], offset_ms: int) -> FrameEntry | None:
    """The last frame presented at or before offset_ms (the first one if none is yet).

    None for a fragment without video frames: its samples become MEDIA_ERROR.
    """
    if not frames:
        return None
    shown = None
    for frame in frames:
        if frame.offset_ms <= offset_ms and (shown is None or frame.offset_ms > shown.offset_ms):
            shown = frame
    return shown or min(frames, key=lambda f: f.offset_ms)

