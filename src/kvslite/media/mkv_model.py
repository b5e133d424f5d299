"""What the Matroska reader produces and the writers consume."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Track:
    number: int
    uid: int
    track_type: int  # 1 video, 2 audio, 0x11 subtitle, ...
    codec_id: str
    codec_private: bytes | None = None
    name: str | None = None
    width: int | None = None
    height: int | None = None
    sampling_frequency: float | None = None
    channels: int | None = None
    default_duration_ns: int | None = None


@dataclass
class StreamHeader:
    timecode_scale_ns: int
    tracks: list[Track]
    title: str | None = None
    muxing_app: str | None = None
    writing_app: str | None = None
    # As received: EBML header + Segment ID with an unknown size + Info + Tracks. Empty for a
    # header built in code. Left out of ==: it is how the header was encoded, not what it says.
    raw: bytes = field(default=b"", compare=False, repr=False)


class Frame:
    """One frame of a Cluster.

    A frame read from input keeps its block element as received in `block` (the whole
    SimpleBlock or BlockGroup, ID and size included, so BlockAdditions, BlockDuration and
    ReferenceBlock survive); `payload` is sliced from it on access, so the bytes are held once.
    A frame built in code passes `payload` and has `block` None: it is written as a SimpleBlock.
    Equality compares track, timecode, keyframe and payload, not the encoding."""

    __slots__ = ("track_number", "timecode", "keyframe", "block", "payload_offset",
                 "payload_size", "_payload")
    # unhashable, being mutable like the dataclass it replaces: __eq__ without __hash__

    def __init__(self, track_number: int, timecode: int, keyframe: bool,
                 payload: bytes | None = None, *, block: bytes | None = None,
                 payload_offset: int = 0, payload_size: int | None = None):
        if (payload is None) == (block is None):
            raise TypeError("Frame needs exactly one of payload and block")
        self.track_number = track_number
        self.timecode = timecode  # absolute PTS in TimecodeScale units
        self.keyframe = keyframe
        self.block = block
        self._payload = payload if payload is not None else b""  # else sliced from block
        self.payload_offset = payload_offset if block is not None else 0
        if payload_size is None:
            payload_size = len(self._payload) if block is None else len(block) - payload_offset
        self.payload_size = payload_size

    @property
    def payload(self) -> bytes:
        if self.block is None:
            return self._payload
        return self.block[self.payload_offset:self.payload_offset + self.payload_size]

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.track_number, self.timecode, self.keyframe, self.payload_size) == \
            (other.track_number, other.timecode, other.keyframe, other.payload_size) \
            and self.payload == other.payload

    def __repr__(self) -> str:
        kind = "" if self.block is None else f", block=<{len(self.block)} bytes>"
        return (f"Frame(track_number={self.track_number}, timecode={self.timecode}, "
                f"keyframe={self.keyframe}, payload={self.payload!r}{kind})")


@dataclass
class Cluster:
    timecode: int
    frames: list[Frame] = field(default_factory=list)
    offset: int = field(default=0, compare=False)  # reader: where its body starts in the input


@dataclass
class Tags:
    tags: list[tuple[str, str]]  # (TagName, TagString) from every SimpleTag, depth first
