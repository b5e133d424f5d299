"""GetClip (`kinesis-video-archived-media`): whole fragments of a time range as one MP4.

The clip is remuxed (never re-encoded) into an unlinked temporary file, since the mp4
muxer seeks to put the moov first, and streamed from there: memory stays bounded by
one fragment.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import av
from starlette.responses import StreamingResponse

from kvslite.server.archive import Clock, Fragment, Stream
from kvslite.server.archive.control_plane import ControlPlane, require_archive
from kvslite.server.archive.fragments import Archive, unpack_frames
from kvslite.server.archive.segments import check_playable, clip_delay, fragment_samples
from kvslite.server.archive.selection import fragments_in_range
from kvslite.server.api_errors import (
    CLIENT_LIMIT_EXCEEDED,
    INVALID_CODEC_PRIVATE_DATA,
    INVALID_MEDIA_FRAME,
    ApiError,
    invalid,
    not_found,
)
from kvslite.media import remux
from kvslite.server.ops import requests as rq

MAX_CLIP_BYTES = 200 * 1024 * 1024
MAX_CLIP_MS = 90 * 60_000
MAX_RANGE_MS = 24 * 3600_000  # AWS: EndTimestamp within 24 hours of StartTimestamp
MAX_CLIPS_IN_FLIGHT = 4
CHUNK = 1 << 20


class Clips:
    def __init__(self, control: ControlPlane, archive: Archive, *, now_ms):
        self.control = control
        self.archive = archive
        self.now_ms = now_ms
        self.slots = threading.BoundedSemaphore(MAX_CLIPS_IN_FLIGHT)

    def operations(self) -> dict:
        return {"GetClip": self.get_clip}

    def get_clip(self, request: rq.GetClipInput) -> StreamingResponse:
        stream = require_archive(self.control.resolve(request.stream_name, request.stream_arn))
        selector = request.clip_fragment_selector
        clock = Clock(selector.fragment_selector_type)
        start, end = time_range(clock, selector.timestamp_range, self.now_ms(),
                                end_required=True)
        assert end is not None  # end_required
        placed = self._clip_fragments(stream, clock, start, end)
        if not self.slots.acquire(blocking=False):
            raise ApiError(CLIENT_LIMIT_EXCEEDED,
                           "Too many GetClip requests in flight; retry shortly")
        try:
            clip = self._write_clip(placed)
        finally:
            self.slots.release()
        size = os.fstat(clip.fileno()).st_size
        return StreamingResponse(_chunks(clip), media_type="video/mp4",
                                 headers={"Content-Length": str(size)})

    def _clip_fragments(self, stream: Stream, clock: Clock, start: int, end: int
                        ) -> list[tuple[Fragment, int]]:
        """(fragment, where it starts in the clip), within the size and length limits."""
        placed, size = [], 0
        in_range = fragments_in_range(self.archive, stream.arn, clock, start, end)
        for fragment, at in _placed(in_range, clock):
            placed.append((fragment, at))
            size += fragment.size
            if size > MAX_CLIP_BYTES or at + fragment.duration_ms - placed[0][1] > MAX_CLIP_MS:
                raise invalid(f"The clip exceeds the limit of {MAX_CLIP_BYTES >> 20} MB or "
                              f"{MAX_CLIP_MS // 60_000} minutes of media; request a shorter "
                              f"time range")
        if not placed:
            raise not_found("No fragments found in the specified time range")
        self._check_same_tracks([fragment for fragment, _ in placed])
        return placed

    def _check_same_tracks(self, fragments: list[Fragment]) -> None:
        headers = {f.header_id for f in fragments}
        check_playable(self.archive, fragments[0])
        if len({self.archive.header(h) for h in headers}) > 1:
            raise ApiError(INVALID_CODEC_PRIVATE_DATA,
                           "The codec private data or tracks change within the requested "
                           "clip; request a range with one track configuration")

    def _write_clip(self, placed: list[tuple[Fragment, int]]):
        """The clip in an unlinked temporary file, opened for reading."""
        origin = placed[0][1]
        delay = clip_delay([fragment for fragment, _ in placed])
        samples = (sample for fragment, at in placed
                   for sample in fragment_samples(self.archive, fragment, at, origin, delay))
        fd, path = tempfile.mkstemp(prefix="kvslite-clip-", suffix=".mp4")
        os.close(fd)
        try:
            with media_errors():
                remux.write_mp4(path, self.archive.header(placed[0][0].header_id), samples)
            return open(path, "rb")
        finally:
            os.unlink(path)  # the open file keeps the data until it is closed


def time_range(clock: Clock, timestamps, now_ms: int, *, end_required: bool
               ) -> tuple[int, int | None]:
    """A playback TimestampRange (Clip, HLS or DASH shape) in epoch ms, checked as AWS
    checks it."""
    if timestamps.start_timestamp is None:
        raise invalid("TimestampRange.StartTimestamp is required")
    start = round(timestamps.start_timestamp * 1000)
    end = timestamps.end_timestamp
    if end is None:
        if end_required:
            raise invalid("TimestampRange.EndTimestamp is required")
        return start, None
    end = round(end * 1000)
    if end <= start:
        raise invalid("EndTimestamp must be later than StartTimestamp")
    if end - start > MAX_RANGE_MS:
        raise invalid("EndTimestamp must be within 24 hours of StartTimestamp")
    if clock is Clock.SERVER and end > now_ms:
        raise invalid("With SERVER_TIMESTAMP, EndTimestamp must be in the past")
    return start, end


def _placed(fragments: Iterable[Fragment], clock: Clock) -> Iterator[tuple[Fragment, int]]:
    """Each fragment with where it starts in a clip: at its time on the clock, unless its
    first frame would not come after the previous fragment's last frame (fragments
    uploaded faster than real time overlap on the server clock): then right after the
    previous one ends. Gaps stay, and so does a jitter of less than a frame."""
    end, last_frame = 0, None  # of the previous fragment, once there is one
    for fragment in fragments:
        start = fragment.start_ms(clock)
        if last_frame is not None and start <= last_frame:
            start = end
        end = start + fragment.duration_ms
        last_frame = start + max((e.offset_ms for e in unpack_frames(fragment.frames)), default=0)
        yield fragment, start


@contextmanager
def media_errors():
    """FFmpeg refusing the stored frames is the media's fault, not the server's."""
    try:
        yield
    except (av.FFmpegError, ValueError) as e:
        raise ApiError(INVALID_MEDIA_FRAME,
                       f"The stored media could not be remuxed: {e}") from e


def _chunks(file) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK):
            yield chunk
