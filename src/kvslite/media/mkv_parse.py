"""Parsing of fully buffered Matroska elements for `MkvReader`: EBML header, Info, Tracks,
Tags and blocks. Only what KVS needs is interpreted; the rest is kept as received by the
reader, except what would make the stored frames undecodable, which is refused."""

from __future__ import annotations

from .ebml import (
    AUDIO, BLOCK, BLOCK_GROUP, CHANNELS, CODEC_ID, CODEC_PRIVATE, CONTENT_COMP_ALGO,
    CONTENT_COMPRESSION, CONTENT_ENCODING, CONTENT_ENCODINGS, CONTENT_ENCRYPTION, DEFAULT_DURATION,
    DOC_TYPE, EBML, INFO, MUXING_APP, NAME, PIXEL_HEIGHT, PIXEL_WIDTH, REFERENCE_BLOCK,
    SAMPLING_FREQUENCY, SIMPLE_TAG, TAG, TAG_NAME, TAG_STRING, TAGS, TIMECODE_SCALE, TITLE,
    TRACK_ENTRY, TRACK_NUMBER, TRACK_TYPE, TRACK_UID, TRACKS, UNKNOWN, VIDEO, WRITING_APP, MkvError,
    child_spans, decode_float, decode_str, decode_uint, iter_children, read_size,
)
from .mkv_model import Track

_TRACK_UINTS = {TRACK_NUMBER: "number", TRACK_UID: "uid", TRACK_TYPE: "track_type",
                DEFAULT_DURATION: "default_duration_ns"}
_COMP_ALGOS = {0: "zlib", 1: "bzlib", 2: "lzo1x", 3: "header stripping"}


def check_doc_type(body: bytes) -> None:
    doc_type = next((decode_str(v) for i, v in iter_children(body, EBML) if i == DOC_TYPE),
                    "matroska")
    if doc_type not in ("matroska", "webm"):
        raise MkvError("invalid_mkv", f"unsupported EBML DocType {doc_type!r}")


def parse_info(body: bytes, info: dict) -> None:
    """Update `info` (scale, title, muxing_app, writing_app) from an Info body."""
    keys = {TITLE: "title", MUXING_APP: "muxing_app", WRITING_APP: "writing_app"}
    for cid, value in iter_children(body, INFO):
        if cid == TIMECODE_SCALE:
            info["scale"] = decode_uint(value)
        elif cid in keys:
            info[keys[cid]] = decode_str(value)
    if info.get("scale", 1) <= 0:
        raise MkvError("invalid_mkv", "TimecodeScale must be positive")


def parse_tracks(body: bytes) -> dict[int, Track]:
    tracks: dict[int, Track] = {}
    for cid, entry in iter_children(body, TRACKS):
        if cid != TRACK_ENTRY:
            continue
        t = _parse_track_entry(entry)
        if t.number == 0 or t.number in tracks:
            raise MkvError("invalid_mkv", f"missing or duplicate TrackNumber {t.number}")
        tracks[t.number] = t
    return tracks


def _parse_track_entry(entry: bytes) -> Track:
    t = Track(number=0, uid=0, track_type=0, codec_id="")
    encodings = None
    for k, v in iter_children(entry, TRACK_ENTRY):
        if k in _TRACK_UINTS:
            setattr(t, _TRACK_UINTS[k], decode_uint(v))
        elif k == CODEC_ID:
            t.codec_id = decode_str(v)
        elif k == CODEC_PRIVATE:
            t.codec_private = v
        elif k == NAME:
            t.name = decode_str(v)
        elif k in (VIDEO, AUDIO):
            _parse_video_audio(t, k, v)
        elif k == CONTENT_ENCODINGS:
            encodings = v
    if encodings is not None:  # checked last: the message names the track
        _refuse_content_encodings(t, encodings)
    return t


def _parse_video_audio(t: Track, kind: int, body: bytes) -> None:
    for k, v in iter_children(body, kind):
        if k == PIXEL_WIDTH:
            t.width = decode_uint(v)
        elif k == PIXEL_HEIGHT:
            t.height = decode_uint(v)
        elif k == SAMPLING_FREQUENCY:
            t.sampling_frequency = decode_float(v)
        elif k == CHANNELS:
            t.channels = decode_uint(v)


def _refuse_content_encodings(t: Track, body: bytes) -> None:
    """Frames are stored and served as sent, and clients of KVS expect plain frames: a
    compressed or encrypted track would be stored undecodable, so it is refused up front."""
    for cid, encoding in iter_children(body, CONTENT_ENCODINGS):
        if cid != CONTENT_ENCODING:
            continue
        for k, v in iter_children(encoding, CONTENT_ENCODING):
            if k == CONTENT_COMPRESSION:
                algo = next((decode_uint(a) for i, a in iter_children(v, CONTENT_COMPRESSION)
                             if i == CONTENT_COMP_ALGO), 0)
                what = f"{_COMP_ALGOS.get(algo, 'unknown')} compression (ContentCompAlgo {algo})"
            elif k == CONTENT_ENCRYPTION:
                what = "encryption (ContentEncryption)"
            else:
                continue
            raise MkvError("invalid_mkv", f"track {t.number} ({t.codec_id or 'no CodecID'}) uses "
                                          f"ContentEncodings with {what}; only unencoded "
                                          f"frames can be stored")


def parse_tags(body: bytes) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def simple_tag(b: bytes, depth: int = 0) -> None:
        if depth > 8:
            raise MkvError("invalid_mkv", "SimpleTags nested too deeply")
        name, value, nested = "", "", []
        for k, v in iter_children(b, SIMPLE_TAG):
            if k == TAG_NAME:
                name = decode_str(v)
            elif k == TAG_STRING:
                value = decode_str(v)
            elif k == SIMPLE_TAG:
                nested.append(v)
        out.append((name, value))
        for v in nested:
            simple_tag(v, depth + 1)

    for cid, tag in iter_children(body, TAGS):
        if cid == TAG:
            for k, v in iter_children(tag, TAG):
                if k == SIMPLE_TAG:
                    simple_tag(v)
    return out


def parse_block(data: bytes, hlen: int, group: bool, tracks) -> tuple[int, int, bool, int, int]:
    """(track, relative timecode, keyframe, payload start, payload end) of a whole SimpleBlock
    (`group` False) or BlockGroup element `data` whose header is `hlen` bytes long, for one
    of `tracks` (track numbers)."""
    start, end, keyframe = hlen, len(data), None
    if group:
        keyframe = True  # a BlockGroup without ReferenceBlock is a keyframe
        block: tuple[int, int] | None = None
        for cid, s, e in child_spans(data, hlen, len(data), BLOCK_GROUP):
            if cid == BLOCK:
                if block is not None:
                    raise MkvError("invalid_mkv", "BlockGroup with more than one Block")
                block = s, e
            elif cid == REFERENCE_BLOCK:
                keyframe = False
        if block is None:
            raise MkvError("invalid_mkv", "BlockGroup without a Block")
        start, end = block
    got = read_size(data, start)
    if got is None or got[0] == UNKNOWN or end - start < got[1] + 3:
        raise MkvError("invalid_mkv", "malformed block header")
    track, n = got
    if track not in tracks:
        raise MkvError("unknown_track", f"block for undeclared track {track}")
    flags = data[start + n + 2]
    if flags & 0x06:
        raise MkvError("unsupported", "laced blocks are not supported")
    rel = int.from_bytes(data[start + n:start + n + 2], "big", signed=True)
    key = bool(flags & 0x80) if keyframe is None else keyframe  # SimpleBlock: the flag
    return track, rel, key, start + n + 3, end
