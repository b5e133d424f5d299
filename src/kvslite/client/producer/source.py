"""Sources: the first video stream of a file or live URL, demuxed by FFmpeg (PyAV) and
passed on as it is (no re-encoding). Audio and other streams are skipped."""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction

from .errors import SourceError
from .video import VideoFormat, normalize_codec

# (pts_ms, keyframe, payload) in decode order; close() stops the demuxing
Packets = Generator[tuple[int, bool, bytes], None, None]


@dataclass
class MediaSource:
    """A demuxed video stream: its format, its duration if known, and its packets."""

    video: VideoFormat
    duration_ms: int | None
    packets: Packets
    description: str = ""
    skipped_streams: int = 0


def open_source(source: str, *, timeout: float = 15.0, options: dict | None = None) -> MediaSource:
    """Open a file or URL with FFmpeg (PyAV) and return its first video stream, unchanged
    (no re-encoding). Audio and other streams are skipped."""
    import av

    opts = dict(options or {})
    if source.startswith(("rtsp://", "rtsps://")):
        opts.setdefault("rtsp_transport", "tcp")
    try:
        container = av.open(source, options=opts, timeout=timeout)
    except (OSError, av.FFmpegError) as e:
        raise SourceError(f"cannot open {source}: {e}") from None
    try:
        if not container.streams.video:
            raise SourceError(f"{source} has no video stream")
        stream = container.streams.video[0]
        video = _video_format(stream)
        duration_ms = _duration_ms(container, stream)
        if duration_ms is None and os.path.isfile(source):
            duration_ms = _scan_duration_ms(source, opts, timeout)  # not in the headers
    except BaseException:
        container.close()
        raise
    return MediaSource(video, duration_ms, _demux(container, stream, video),
                       f"{video.codec} {video.width}x{video.height}",
                       len(container.streams) - 1)


def _video_format(stream) -> VideoFormat:
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    return VideoFormat(codec=normalize_codec(ctx.name or ""),
                       codec_private=bytes(ctx.extradata or b"") or None,
                       width=ctx.width or None, height=ctx.height or None,
                       frame_rate=float(rate) if rate else None)


def _duration_ms(container, stream) -> int | None:
    """The duration the headers give: the stream's, else the container's."""
    if stream.duration and stream.time_base:
        return math.ceil(stream.duration * stream.time_base * 1000)
    if container.duration:
        return math.ceil(container.duration / 1000)  # in AV_TIME_BASE (microseconds)
    return None


def _scan_duration_ms(source: str, options: dict, timeout: float) -> int | None:
    """The duration from the packet timestamps: the pts span plus one frame."""
    import av

    try:
        with av.open(source, options=options, timeout=timeout) as container:
            stream = container.streams.video[0]
            tb = stream.time_base or Fraction(1, 1000)
            times = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
            rate = stream.average_rate or stream.guessed_rate  # read while the container is open
    except (OSError, av.FFmpegError):
        return None
    if not times:
        return None
    return math.ceil((max(times) - min(times)) * tb * 1000 + (1000 / rate if rate else 0))


def _demux(container, stream, video: VideoFormat) -> Packets:
    """The stream's packets as (pts_ms, keyframe, payload); closes the container at the end."""
    import av

    tb = stream.time_base or Fraction(1, 1000)
    frame_ms = 1000 / video.frame_rate if video.frame_rate else 40.0
    n = 0
    try:
        for pkt in container.demux(stream):
            if not pkt.size:
                continue  # a flush packet
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            pts_ms = round(ts * tb * 1000) if ts is not None else round(n * frame_ms)
            n += 1
            yield pts_ms, bool(pkt.is_keyframe), bytes(pkt)
    except av.FFmpegError as e:
        raise SourceError(f"reading the source failed: {e}") from None
    finally:
        container.close()
