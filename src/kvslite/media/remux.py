"""Remux stored frames into MP4, fragmented MP4 and MPEG-TS without re-encoding.

The codec parameters (avcC/hvcC, size, sample rate) come from the stream's stored
Matroska header: FFmpeg's Matroska demuxer reads it and each output stream is
created from the demuxed stream as a template. The payloads are the stored
frames, byte for byte; timestamps are set here. Matroska keeps only presentation
times, so decode times are derived: within a track, the i-th decode time is the
i-th smallest presentation time minus the codec's reordering delay (the largest
amount by which a frame's presentation time exceeds its decode slot), which is
monotonic and never after the presentation time.
"""

from __future__ import annotations

import io
import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import av

from .mkv import Cluster, MkvReader, StreamHeader, Track, write_cluster

MS = Fraction(1, 1000)
TIMESCALE = 90_000  # MP4 track timescale and MPEG-TS clock
# Matroska CodecID -> what MP4/MPEG-TS carry (AWS's playback codecs)
PLAYABLE_CODECS = {"V_MPEG4/ISO/AVC": "h264", "V_MPEGH/ISO/HEVC": "hevc", "A_AAC": "aac"}
NEEDS_CODEC_PRIVATE = {"V_MPEG4/ISO/AVC", "V_MPEGH/ISO/HEVC", "A_AAC"}
_FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont+skip_trailer",
    "avoid_negative_ts": "disabled",  # keep our timeline: tfdt is the first decode time
    "use_editlist": "0",
    "video_track_timescale": str(TIMESCALE),
}


@dataclass(frozen=True)
class Sample:
    """One frame to mux; times in ms on the output timeline."""

    track: int  # Matroska track number
    pts: int
    dts: int
    duration: int
    keyframe: bool
    payload: bytes


@dataclass(frozen=True)
class Timed:
    """Decode time and duration of one stored frame, see `decode_times`."""

    dts: int
    duration: int


def parse_header(header: bytes) -> StreamHeader:
    for event in MkvReader().feed(header):
        if isinstance(event, StreamHeader):
            return event
    raise ValueError("stored header has no Tracks")


def reorder_delay(pts_in_decode_order: list[int]) -> int:
    """How far presentation runs ahead of decode order (0 without B-frames)."""
    ordered = sorted(pts_in_decode_order)
    return max((s - p for s, p in zip(ordered, pts_in_decode_order)), default=0)


def decode_times(frames: list[tuple[int, int]], end: int, delay: int | None = None
                 ) -> list[Timed]:
    """Decode times and durations for (track, pts) frames in decode order.

    `end` is when the last frame of each track stops showing; `delay` (per track if
    None) keeps decode times monotonic across fragments when given one value for all.
    """
    by_track: dict[int, list[int]] = defaultdict(list)
    for track, pts in frames:
        by_track[track].append(pts)
    slots: dict[int, list[Timed]] = {}
    for track, pts_list in by_track.items():
        shift = reorder_delay(pts_list) if delay is None else delay
        ordered = sorted(pts_list)
        following = ordered[1:] + [max(end, ordered[-1] + 1)]
        slots[track] = [Timed(s - shift, max(1, n - s)) for s, n in zip(ordered, following)]
    position: dict[int, int] = defaultdict(int)
    out = []
    for track, _ in frames:
        out.append(slots[track][position[track]])
        position[track] += 1
    return out


class _Templates:
    """Input streams carrying each track's codec parameters, read from the header."""

    def __init__(self, header: bytes):
        self.tracks = parse_header(header).tracks
        empty_cluster = write_cluster(Cluster(0, []))[0]
        self.container = av.open(io.BytesIO(header + empty_cluster), format="matroska")
        streams = list(self.container.streams)
        if len(streams) != len(self.tracks):
            self.container.close()
            raise ValueError("FFmpeg does not recognise every track of the stream")
        self.by_track = {t.number: s for t, s in zip(self.tracks, streams)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.close()


def _mux(target, fmt: str, header: bytes, samples: Iterable[Sample], options: dict) -> None:
    with _Templates(header) as templates, \
            av.open(target, "w", format=fmt, options=options) as out:
        streams = {n: out.add_stream_from_template(s) for n, s in templates.by_track.items()}
        for track in templates.tracks:
            streams[track.number].time_base = Fraction(1, TIMESCALE)
            if fmt == "mp4" and track.codec_id == "V_MPEGH/ISO/HEVC":
                streams[track.number].codec_context.codec_tag = "hvc1"  # as Apple requires
        if not streams:
            raise ValueError("no tracks to mux")
        out.start_encoding()
        for sample in samples:
            packet = av.Packet(sample.payload)
            packet.stream = streams[sample.track]
            packet.time_base = MS
            packet.pts, packet.dts, packet.duration = sample.pts, sample.dts, sample.duration
            packet.is_keyframe = sample.keyframe
            out.mux(packet)


def write_mp4(path: str, header: bytes, samples: Iterable[Sample]) -> None:
    """A progressive MP4 (moov first) at `path`; the mp4 muxer needs a seekable file."""
    _mux(path, "mp4", header, samples, {"movflags": "+faststart"})


def fragmented_mp4(header: bytes, samples: Iterable[Sample]) -> tuple[bytes, bytes]:
    """(init, media): ftyp+moov, and the moof+mdat pairs of `samples`.

    Each moof's tfdt is its first decode time on the output timeline, so segments made
    separately line up into one continuous timeline.
    """
    buffer = io.BytesIO()
    _mux(buffer, "mp4", header, samples, _FRAGMENTED)
    data = buffer.getvalue()
    boxes = list(_boxes(data))
    first_moof = next((start for kind, start, _ in boxes if kind == b"moof"), len(data))
    media = b"".join(data[start:end] for kind, start, end in boxes
                     if kind in (b"moof", b"mdat"))
    return data[:first_moof], media


def init_segment(header: bytes) -> bytes:
    return fragmented_mp4(header, [])[0]


def mpeg_ts(header: bytes, samples: Iterable[Sample]) -> bytes:
    """An MPEG-TS chunk with all tracks; H.264/H.265 go out as Annex B (FFmpeg's BSF)."""
    buffer = io.BytesIO()
    _mux(buffer, "mpegts", header, samples, {"mpegts_copyts": "1"})
    return buffer.getvalue()


def _boxes(data: bytes):
    """(type, start, end) of the top-level ISO BMFF boxes."""
    position = 0
    while position + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, position)
        if size == 1:
            size = struct.unpack_from(">Q", data, position + 8)[0]
        elif size == 0:
            size = len(data) - position
        if size < 8:
            break
        yield kind, position, position + size
        position += size


def codec_string(track: Track) -> str | None:
    """RFC 6381 `codecs` value (HLS CODECS, DASH @codecs) from the codec private data."""
    cpd = track.codec_private or b""
    if track.codec_id == "V_MPEG4/ISO/AVC" and len(cpd) >= 4:
        return f"avc1.{cpd[1:4].hex()}"
    if track.codec_id == "V_MPEGH/ISO/HEVC" and len(cpd) >= 13:
        space = "" if not cpd[1] >> 6 else "ABC"[(cpd[1] >> 6) - 1]
        compat = int.from_bytes(cpd[2:6], "big")
        compat = int(f"{compat:032b}"[::-1], 2)  # the flags are written bit-reversed
        tier = "H" if cpd[1] & 0x20 else "L"
        constraints = cpd[6:12].rstrip(b"\0")
        parts = [f"hvc1.{space}{cpd[1] & 0x1F}", f"{compat:X}", f"{tier}{cpd[12]}"]
        parts += [f"{b:02X}" for b in constraints]
        return ".".join(parts)
    if track.codec_id == "A_AAC" and cpd:
        return f"mp4a.40.{cpd[0] >> 3}"
    return None
