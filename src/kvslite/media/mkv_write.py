"""A small KVS-style Matroska writer: see `kvslite.media.mkv`."""

from __future__ import annotations

from .ebml import (
    AUDIO, CHANNELS, CLUSTER, CODEC_ID, CODEC_PRIVATE, DEFAULT_DURATION, DOC_TYPE, EBML,
    FLAG_LACING, INFO, MUXING_APP, NAME, PIXEL_HEIGHT, PIXEL_WIDTH, SAMPLING_FREQUENCY, SEGMENT,
    SIMPLE_BLOCK, SIMPLE_TAG, TAG, TAG_NAME, TAG_STRING, TAGS, TARGETS, TIMECODE, TIMECODE_SCALE,
    TITLE, TRACK_ENTRY, TRACK_NUMBER, TRACK_TYPE, TRACK_UID, TRACKS, UNKNOWN_SIZE_VINT, VIDEO,
    WRITING_APP, MkvError, element, encode_id, encode_size, float_element, str_element,
    uint_element,
)
from .mkv_model import Cluster, Frame, StreamHeader, Track


def header_bytes(header: StreamHeader) -> bytes:
    """The header to store or send before clusters: as received when read, else written."""
    return header.raw or write_header(header)


def write_header(header: StreamHeader, *, muxing_app: str = "kvslite") -> bytes:
    """EBML header + Segment start (unknown size) + Info + Tracks, from the parsed fields."""
    # EBMLVersion 1, EBMLReadVersion 1, EBMLMaxIDLength 4, EBMLMaxSizeLength 8, DocType,
    # DocTypeVersion 4, DocTypeReadVersion 2 (SimpleBlock needs 2).
    ebml = element(EBML, uint_element(0x4286, 1) + uint_element(0x42F7, 1)
                   + uint_element(0x42F2, 4) + uint_element(0x42F3, 8)
                   + str_element(DOC_TYPE, "matroska") + uint_element(0x4287, 4)
                   + uint_element(0x4285, 2))
    info = uint_element(TIMECODE_SCALE, header.timecode_scale_ns)
    info += str_element(MUXING_APP, muxing_app)
    info += str_element(WRITING_APP, header.writing_app or muxing_app)
    if header.title:
        info += str_element(TITLE, header.title)
    entries = b"".join(element(TRACK_ENTRY, _track_entry(t)) for t in header.tracks)
    segment_start = encode_id(SEGMENT) + UNKNOWN_SIZE_VINT
    return ebml + segment_start + element(INFO, info) + element(TRACKS, entries)


def _track_entry(t: Track) -> bytes:
    e = uint_element(TRACK_NUMBER, t.number) + uint_element(TRACK_UID, t.uid or t.number)
    e += uint_element(TRACK_TYPE, t.track_type) + uint_element(FLAG_LACING, 0)
    e += str_element(CODEC_ID, t.codec_id)
    if t.codec_private:
        e += element(CODEC_PRIVATE, t.codec_private)
    if t.name:
        e += str_element(NAME, t.name)
    if t.default_duration_ns:
        e += uint_element(DEFAULT_DURATION, t.default_duration_ns)
    if t.width and t.height:
        e += element(VIDEO, uint_element(PIXEL_WIDTH, t.width)
                     + uint_element(PIXEL_HEIGHT, t.height))
    if t.sampling_frequency or t.channels:
        a = float_element(SAMPLING_FREQUENCY, t.sampling_frequency or 8000.0)
        e += element(AUDIO, a + uint_element(CHANNELS, t.channels or 1))
    return e


def write_cluster(cluster: Cluster, *, tags: list[tuple[str, str]] | None = None,
                  unknown_size: bool = False) -> tuple[bytes, list[int]]:
    """One Cluster: Timecode, then each frame's block as received (SimpleBlock or BlockGroup,
    byte for byte) or, for a frame built in code, a SimpleBlock (no lacing). Known size
    unless `unknown_size`; `tags`, if given, are appended as a segment-level Tags element.
    Returns (bytes, payload_offsets): frames[i].payload == data[off[i]:off[i] + len(payload)]."""
    if cluster.timecode < 0:
        raise MkvError("timecode_range", f"negative cluster timecode {cluster.timecode}")
    parts = [uint_element(TIMECODE, cluster.timecode)]
    offsets, pos = [], len(parts[0])
    for f in cluster.frames:
        block, at = _block_parts(f, _relative_timecode(f, cluster.timecode))
        offsets.append(pos + at)
        parts += block
        pos += sum(len(p) for p in block)
    cluster_head = encode_id(CLUSTER) + (UNKNOWN_SIZE_VINT if unknown_size else encode_size(pos))
    data = b"".join([cluster_head, *parts])
    if tags:
        data += write_tags(tags)
    return data, [o + len(cluster_head) for o in offsets]


def _relative_timecode(f: Frame, cluster_timecode: int) -> int:
    rel = f.timecode - cluster_timecode
    if not -32768 <= rel <= 32767:
        raise MkvError("timecode_range", f"frame timecode {f.timecode} is {rel} from the "
                                         f"cluster timecode {cluster_timecode}, outside int16")
    return rel


def _block_parts(f: Frame, rel: int) -> tuple[list, int]:
    """The pieces of the frame's block element and where its payload starts in them."""
    if f.block is None:
        head = encode_size(f.track_number) + rel.to_bytes(2, "big", signed=True)
        head += bytes([0x80 if f.keyframe else 0])
        head = encode_id(SIMPLE_BLOCK) + encode_size(len(head) + len(f.payload)) + head
        return [head, f.payload], len(head)
    at = f.payload_offset - 3  # the block's int16 timecode, just before the flags byte
    stored = f.block[at:at + 2]
    wanted = rel.to_bytes(2, "big", signed=True)
    if stored == wanted:
        return [f.block], f.payload_offset
    # Written under another cluster Timecode than it was read with: only the offset moves.
    view = memoryview(f.block)
    return [view[:at], wanted, view[at + 2:]], f.payload_offset


def write_tags(tags: list[tuple[str, str]]) -> bytes:
    """A segment-level Tags element with one Tag (empty Targets) holding one SimpleTag per pair."""
    body = element(TARGETS, b"") + b"".join(
        element(SIMPLE_TAG, str_element(TAG_NAME, name) + str_element(TAG_STRING, value))
        for name, value in tags)
    return element(TAGS, element(TAG, body))
