"""EBML primitives: element IDs, variable-length integers, element encoding/decoding."""

from __future__ import annotations

import struct

# Element IDs as they appear on the wire (marker bits included).
EBML, DOC_TYPE, SEGMENT = 0x1A45DFA3, 0x4282, 0x18538067
SEEK_HEAD, INFO, TRACKS, CLUSTER = 0x114D9B74, 0x1549A966, 0x1654AE6B, 0x1F43B675
CUES, TAGS, CHAPTERS, ATTACHMENTS = 0x1C53BB6B, 0x1254C367, 0x1043A770, 0x1941A469
VOID, CRC32 = 0xEC, 0xBF
TIMECODE_SCALE, MUXING_APP, WRITING_APP, TITLE = 0x2AD7B1, 0x4D80, 0x5741, 0x7BA9
TRACK_ENTRY, TRACK_NUMBER, TRACK_UID, TRACK_TYPE = 0xAE, 0xD7, 0x73C5, 0x83
CODEC_ID, CODEC_PRIVATE, NAME = 0x86, 0x63A2, 0x536E
DEFAULT_DURATION, FLAG_LACING = 0x23E383, 0x9C
VIDEO, PIXEL_WIDTH, PIXEL_HEIGHT = 0xE0, 0xB0, 0xBA
AUDIO, SAMPLING_FREQUENCY, CHANNELS = 0xE1, 0xB5, 0x9F
TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP, BLOCK, REFERENCE_BLOCK = 0xE7, 0xA3, 0xA0, 0xA1, 0xFB
TAG, TARGETS, SIMPLE_TAG, TAG_NAME, TAG_STRING = 0x7373, 0x63C0, 0x67C8, 0x45A3, 0x4487
# TrackEntry details the reader only checks or keeps as received
CONTENT_ENCODINGS, CONTENT_ENCODING = 0x6D80, 0x6240
CONTENT_COMPRESSION, CONTENT_COMP_ALGO, CONTENT_ENCRYPTION = 0x5034, 0x4254, 0x5035
LANGUAGE, CODEC_DELAY, SEEK_PRE_ROLL = 0x22B59C, 0x56AA, 0x56BB
COLOUR, MATRIX_COEFFICIENTS, TRANSFER_CHARACTERISTICS, PRIMARIES = 0x55B0, 0x55B1, 0x55BA, 0x55BB
MASTERING_METADATA, LUMINANCE_MAX, LUMINANCE_MIN = 0x55D0, 0x55D9, 0x55DA
MAX_CLL, MAX_FALL = 0x55BC, 0x55BD
# BlockGroup children besides Block and ReferenceBlock
BLOCK_DURATION, BLOCK_ADDITIONS, BLOCK_MORE, BLOCK_ADD_ID, BLOCK_ADDITIONAL = (
    0x9B, 0x75A1, 0xA6, 0xEE, 0xA5)

SEGMENT_CHILDREN = {SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, TAGS, CHAPTERS, ATTACHMENTS,
                    VOID, CRC32}
UNKNOWN = -1  # size value of an unknown-size element
_NAMES = {EBML: "EBML", SEGMENT: "Segment", INFO: "Info", TRACKS: "Tracks", CLUSTER: "Cluster",
          TAGS: "Tags", TIMECODE: "Timecode", SIMPLE_BLOCK: "SimpleBlock",
          BLOCK_GROUP: "BlockGroup", BLOCK: "Block", TRACK_ENTRY: "TrackEntry"}


class MkvError(Exception):
    """Bad Matroska input.

    `reason`: invalid_mkv (malformed or unexpected structure, or a track whose frames are
    compressed or encrypted by ContentEncodings), too_large (over a size limit), too_many_frames
    (more blocks in one Cluster than the reader allows),
    truncated (input ended inside an element), unsupported (valid Matroska we do not handle:
    lacing, unknown-size Info/Tracks/Tags), unknown_track (a block for a track not in Tracks),
    timecode_range (writer only: a block offset outside int16). `events` holds the events the
    failing feed()/close() completed before the error, so callers can still act on them."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.events: list = []


def element_name(eid: int) -> str:
    return _NAMES.get(eid, f"element 0x{eid:X}")


# ----------------------------------------------------------------------------- EBML primitives

def _vint_length(first: int, max_len: int, what: str) -> int:
    n = 9 - first.bit_length()  # 0x80.. -> 1 byte, 0x01 -> 8 bytes, 0x00 -> 9 (invalid)
    if n > max_len:
        raise MkvError("invalid_mkv", f"invalid EBML {what} (first byte 0x{first:02X})")
    return n


def read_id(buf, pos: int) -> tuple[int, int] | None:
    """(element id, length) at buf[pos], or None when more bytes are needed."""
    if pos >= len(buf):
        return None
    n = _vint_length(buf[pos], 4, "element ID")
    if pos + n > len(buf):
        return None
    eid = int.from_bytes(buf[pos:pos + n], "big")
    value = eid & ((1 << 7 * n) - 1)
    if value == 0 or value == (1 << 7 * n) - 1:
        raise MkvError("invalid_mkv", f"reserved EBML element ID 0x{eid:X}")
    return eid, n


def read_size(buf, pos: int) -> tuple[int, int] | None:
    """(size or UNKNOWN, length) of the vint at buf[pos], or None when more bytes are needed."""
    if pos >= len(buf):
        return None
    n = _vint_length(buf[pos], 8, "size")
    if pos + n > len(buf):
        return None
    mask = (1 << 7 * n) - 1
    value = int.from_bytes(buf[pos:pos + n], "big") & mask
    return (UNKNOWN if value == mask else value), n


def child_spans(buf, start: int, end: int, parent: int):
    """Iterate (id, payload start, payload end) over the children in buf[start:end] of a fully
    buffered master element, without copying them."""
    pos = start
    while pos < end:
        got = read_id(buf, pos)
        sz = read_size(buf, pos + got[1]) if got else None
        if not got or not sz or sz[0] == UNKNOWN or pos + got[1] + sz[1] + sz[0] > end:
            raise MkvError("invalid_mkv", f"malformed child element in {element_name(parent)}")
        (eid, idlen), (size, szlen) = got, sz
        data = pos + idlen + szlen
        pos = data + size
        yield eid, data, pos


def iter_children(body: bytes, parent: int):
    """Iterate (id, payload) over the children of a fully buffered master element."""
    for eid, start, end in child_spans(body, 0, len(body), parent):
        yield eid, body[start:end]


def decode_uint(b: bytes) -> int:
    if len(b) > 8:
        raise MkvError("invalid_mkv", "integer element longer than 8 bytes")
    return int.from_bytes(b, "big")


def decode_float(b: bytes) -> float:
    if len(b) not in (0, 4, 8):
        raise MkvError("invalid_mkv", "float element must be 0, 4 or 8 bytes")
    return struct.unpack(">f" if len(b) == 4 else ">d", b)[0] if b else 0.0


def decode_str(b: bytes) -> str:
    return b.rstrip(b"\0").decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- encoding

UNKNOWN_SIZE_VINT = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def encode_id(eid: int) -> bytes:
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big")


def encode_size(n: int) -> bytes:
    """Shortest EBML size vint for n (never the all-ones 'unknown' pattern)."""
    length = 1
    while n >= (1 << 7 * length) - 1:
        length += 1
    if length > 8:
        raise MkvError("too_large", f"size {n} does not fit an EBML vint")
    return (n | (1 << 7 * length)).to_bytes(length, "big")


def element(eid: int, payload: bytes) -> bytes:
    return encode_id(eid) + encode_size(len(payload)) + payload


def uint_element(eid: int, v: int) -> bytes:
    return element(eid, v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big"))


def str_element(eid: int, s: str) -> bytes:
    return element(eid, s.encode("utf-8"))


def float_element(eid: int, f: float) -> bytes:
    return element(eid, struct.pack(">d", f))
