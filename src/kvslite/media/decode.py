"""Decode just the frames a request needs out of one fragment.

A fragment starts with a keyframe, so decoding starts there; it stops feeding
packets after the decode-order position of the last wanted frame (B-frames
are handled: a frame never depends on packets that come after it in decode
order) and flushes the decoder to get the reordered tail out.
"""

from __future__ import annotations

import av

# Matroska CodecID -> FFmpeg decoder
DECODERS = {
    "V_MPEG4/ISO/AVC": "h264",
    "V_MPEGH/ISO/HEVC": "hevc",
    "V_VP8": "vp8",
    "V_VP9": "vp9",
    "V_AV1": "av1",
    "V_MJPEG": "mjpeg",
}


class DecodeError(Exception):
    """The fragment's media cannot be decoded."""


def video_decoder(name: str) -> av.VideoCodecContext:
    """A decoding context for FFmpeg's video decoder `name` (h264, hevc, ...)."""
    context = av.CodecContext.create(name, "r")
    if not isinstance(context, av.VideoCodecContext):
        raise DecodeError(f"{name} is no video decoder")
    return context


def decode_wanted(codec_id: str, codec_private: bytes | None,
                  packets: list[tuple[int, bytes]], wanted: set[int],
                  *, threads: int = 1) -> dict[int, av.VideoFrame]:
    """Decode `packets` ((pts, payload) in decode order) until every pts in `wanted` is out.

    Returns {pts: frame} for the wanted pts; raises DecodeError if the codec is
    unknown, FFmpeg fails, or a wanted frame never comes out.
    """
    name = DECODERS.get(codec_id)
    if name is None:
        raise DecodeError(f"no decoder for codec {codec_id}")
    last = max(i for i, (pts, _) in enumerate(packets) if pts in wanted)
    try:
        context = video_decoder(name)
        if codec_private:
            context.extradata = codec_private
        # one thread unless asked: fragments already decode in parallel, and FFmpeg's
        # automatic slice threads would oversubscribe the cores
        context.thread_count = threads
        if threads > 1:
            context.thread_type = "FRAME"
        found: dict[int, av.VideoFrame] = {}
        for pts, payload in packets[: last + 1]:
            packet = av.Packet(payload)
            packet.pts = pts
            _keep(context.decode(packet), wanted, found)
        _keep(context.decode(None), wanted, found)
    except (av.FFmpegError, ValueError) as e:
        raise DecodeError(str(e)) from e
    if len(found) != len(wanted):
        raise DecodeError(f"{len(wanted) - len(found)} wanted frame(s) did not decode")
    return found


def _keep(frames, wanted: set[int], found: dict) -> None:
    for frame in frames:
        if frame.pts in wanted:
            found[frame.pts] = frame
