"""What goes up: video packets and the format that describes them (H.264 or H.265 only)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SourceError

CODEC_IDS = {"h264": "V_MPEG4/ISO/AVC", "hevc": "V_MPEGH/ISO/HEVC"}  # Matroska CodecID
MEDIA_TYPES = {"h264": "video/h264", "hevc": "video/h265"}  # CreateStream MediaType
_CODEC_ALIASES = {"h264": "h264", "avc": "h264", "avc1": "h264", "hevc": "hevc", "h265": "hevc",
                  "hvc1": "hevc", "hev1": "hevc"}


@dataclass
class Packet:
    pts_ms: int      # presentation time in ms (any origin; see Producer.put)
    keyframe: bool
    payload: bytes   # one access unit


@dataclass
class VideoFormat:
    codec: str = "h264"               # "h264" or "hevc" (aliases: avc, h265)
    codec_private: bytes | None = None  # avcC/hvcC; None or Annex-B: built from the stream
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None   # written as the track's DefaultDuration when known
    name: str | None = None           # track name


def normalize_codec(codec: str) -> str:
    """"h264" or "hevc" for any of their usual names; SourceError for anything else."""
    name = _CODEC_ALIASES.get(codec.lower())
    if name is None:
        raise SourceError(f"unsupported video codec {codec!r}: KVS producers send H.264 or H.265")
    return name


def packet_fields(packet: Packet | tuple) -> tuple[int, bool, bytes]:
    """(pts_ms, keyframe, payload) of a Packet or a 3-tuple."""
    if isinstance(packet, Packet):
        return packet.pts_ms, packet.keyframe, packet.payload
    pts_ms, keyframe, payload = packet
    return pts_ms, keyframe, payload
