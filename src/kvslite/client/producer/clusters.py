"""Packets -> the PutMedia body: a KVS-style Matroska header, then one Cluster per GOP.

Each Cluster is one KVS fragment. Timecodes are absolute epoch ms (TimecodeScale 1 ms):
producer start time + the packet's pts offset from the first keyframe. A fragment marked
with a FragmentEvent has the event's Tags elements just before its Cluster, in its chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kvslite import __version__
from kvslite.media import mkv
from kvslite.media.limits import MAX_FRAGMENT_MS  # SimpleBlock offsets would allow 32.767 s
from kvslite.media.limits import VIDEO_TRACK_TYPE

from .annexb import AnnexBConverter, is_annexb, is_length_prefixed
from .errors import SourceError
from .event_tags import Events, FragmentEvent, event_chooser
from .timestamps import format_timestamp, now_ms
from .video import CODEC_IDS, VideoFormat, normalize_codec, packet_fields

USER_AGENT = f"kvslite-producer/{__version__}"  # the MKV WritingApp and the HTTP User-Agent


@dataclass
class BodyChunk:
    """A piece of the PutMedia body: the MKV header or one cluster (fragment), preceded by
    the Tags of its event if it has one (so that a resend repeats them)."""

    data: bytes
    timecode: int | None = None   # cluster timecode (epoch ms); None for the header
    frames: int = 0
    media_end_ms: int = 0          # latest frame pts offset from the first keyframe (pacing)
    event: FragmentEvent | None = None  # whose Tags lead `data`


class FragmentBuilder:
    """Packets in decode order -> the MKV header, then one Cluster per GOP.

    Cluster timecodes are absolute epoch ms: `start_ms + (pts - first keyframe pts)`, or the
    pts itself with `absolute_pts`. A cluster's timecode is the earliest pts of its GOP (the
    keyframe's, for closed GOPs); frames keep their own pts. Packets before the first
    keyframe cannot be decoded and are dropped (counted in `dropped`). `events` marks
    fragments for image generation / notification (see Producer.put_async).
    """

    def __init__(self, video: VideoFormat, start_ms: int | None, *, absolute_pts: bool = False,
                 max_fragment_ms: int = MAX_FRAGMENT_MS, track_number: int = 1,
                 events: Events = None):
        self.video = video
        self.codec = normalize_codec(video.codec)
        self.start_ms = start_ms  # None: now, when the first keyframe arrives
        self.absolute_pts = absolute_pts
        self.max_fragment_ms = min(max_fragment_ms, 32767)
        self.track = track_number
        private = video.codec_private
        self.codec_private: bytes | None  # avcC/hvcC; when converting, set at the keyframe
        if private and private[:1] == b"\x01":  # avcC/hvcC (configurationVersion 1): as is
            self.converter, self.codec_private = None, bytes(private)
        else:  # none, or Annex-B parameter sets: convert the packets, build the record
            self.converter, self.codec_private = AnnexBConverter(self.codec, private), None
        self.base_pts: int | None = None  # pts of the first keyframe; set with the header
        self.frames: list[mkv.Frame] = []  # the GOP being built
        self.gop_span = (0, 0)  # earliest and latest frame timecode of that GOP
        self.last_timecode: int | None = None  # of the last cluster built
        self.clusters_built = 0
        self.choose_event = event_chooser(events)
        self.dropped = 0

    def add(self, pts_ms: int, keyframe: bool, payload: bytes) -> list[BodyChunk]:
        """Take one packet; returns the chunks it completes (header, previous GOP)."""
        if pts_ms is None:
            raise SourceError("a packet has no presentation timestamp")
        pts_ms = int(pts_ms)
        out: list[BodyChunk] = []
        if keyframe and self.frames:
            out.append(self._cluster())
        if not self.frames and not keyframe:
            self.dropped += 1  # nothing to decode it from
            return out
        payload = self._length_prefixed(payload)
        if self.base_pts is None:
            out.append(self._start(pts_ms))
        timecode = self._timecode(pts_ms)
        if timecode < 0:
            raise SourceError(f"frame at pts {pts_ms} ms falls before the epoch")
        span = (min(self.gop_span[0], timecode), max(self.gop_span[1], timecode)) \
            if self.frames else (timecode, timecode)
        self._check_span(*span)  # fail early rather than buffer an endless GOP
        self.gop_span = span
        self.frames.append(mkv.Frame(self.track, timecode, bool(keyframe), bytes(payload)))
        return out

    def finish(self) -> list[BodyChunk]:
        """The last GOP's cluster, if any."""
        return [self._cluster()] if self.frames else []

    def _length_prefixed(self, payload: bytes) -> bytes:
        if self.converter:
            return self.converter.convert(payload)
        if is_annexb(payload) and not is_length_prefixed(payload):
            raise SourceError("an Annex-B packet with an avcC/hvcC codec private: pass "
                              "codec_private=None (or Annex-B) to convert the stream")
        return payload

    def _start(self, pts_ms: int) -> BodyChunk:
        """The header, at the first keyframe: now the parameter sets are known."""
        if self.converter:
            self.codec_private = self.converter.codec_private()
        header = BodyChunk(self._header())
        self.base_pts = pts_ms
        if self.start_ms is None and not self.absolute_pts:
            self.start_ms = now_ms()
        return header

    def _header(self) -> bytes:
        v = self.video
        track = mkv.Track(number=self.track, uid=self.track, track_type=VIDEO_TRACK_TYPE,
                          codec_id=CODEC_IDS[self.codec], codec_private=self.codec_private,
                          name=v.name, width=v.width, height=v.height,
                          default_duration_ns=round(1e9 / v.frame_rate) if v.frame_rate else None)
        return mkv.write_header(mkv.StreamHeader(timecode_scale_ns=1_000_000, tracks=[track],
                                                 writing_app=USER_AGENT))

    def _timecode(self, pts_ms: int) -> int:
        if self.absolute_pts:
            return pts_ms
        assert self.start_ms is not None and self.base_pts is not None  # set by _start
        return self.start_ms + pts_ms - self.base_pts

    def _check_span(self, start: int, end: int) -> None:
        if end - start > self.max_fragment_ms:
            raise SourceError(
                f"a GOP longer than {self.max_fragment_ms} ms, the longest a KVS fragment may "
                f"be (from producer time {format_timestamp(start)}): re-encode with keyframes "
                f"at most {self.max_fragment_ms // 1000} s apart (e.g. ffmpeg -g)")

    def _cluster(self) -> BodyChunk:
        frames, self.frames = self.frames, []
        start, end = self.gop_span  # checked against max_fragment_ms as frames came in
        if self.last_timecode is not None and start < self.last_timecode:
            raise SourceError(f"timestamps go backwards: a GOP starts at {start} ms, before the "
                              f"previous one at {self.last_timecode} ms")
        self.last_timecode = start
        data, _ = mkv.write_cluster(mkv.Cluster(start, frames))
        event = self._event_for(start)
        tags = event.mkv_tags() if event is not None else b""
        assert self.base_pts is not None  # a GOP has frames, so _start has run
        return BodyChunk(tags + data, start, len(frames), end - self._timecode(self.base_pts),
                         event)

    def _event_for(self, timecode: int) -> FragmentEvent | None:
        """The event of the cluster being built (the next index, at `timecode`), if any."""
        index, self.clusters_built = self.clusters_built, self.clusters_built + 1
        if self.choose_event is None:
            return None
        event = self.choose_event(index, timecode)
        if event is not None and not isinstance(event, FragmentEvent):
            raise SourceError(f"events returned {event!r} for fragment {index}, not a "
                              f"FragmentEvent or None")
        return event


def media_chunks(packets: Iterable, video: VideoFormat, *, start_ms: int | None = None,
                 absolute_pts: bool = False, max_fragment_ms: int = MAX_FRAGMENT_MS,
                 stop: threading.Event | None = None,
                 events: Events = None) -> Iterator[BodyChunk]:
    """The PutMedia body for `packets`, as header and cluster chunks (with the Tags of
    each fragment `events` marks); ends early at `stop`."""
    builder = FragmentBuilder(video, start_ms, absolute_pts=absolute_pts,
                              max_fragment_ms=max_fragment_ms, events=events)
    stopped = stop.is_set if stop is not None else lambda: False
    it = iter(packets)
    try:
        for packet in it:
            if stopped():
                break
            yield from builder.add(*packet_fields(packet))
        yield from builder.finish()
        if builder.last_timecode is None and not stopped():
            dropped = f" ({builder.dropped} packets dropped)" if builder.dropped else ""
            raise SourceError(f"the video has no keyframe: nothing to upload{dropped}")
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
