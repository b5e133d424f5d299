"""Incremental EBML/Matroska reader and a small KVS-style Matroska writer.

The reader takes a PutMedia body in arbitrary chunks and yields `StreamHeader`,
`Cluster` and `Tags` events as soon as each is known complete. An unknown-size
Cluster ends at the first element ID that cannot be a Cluster child; a known-size
element ends with its last byte. Memory is bounded by the current cluster.

Only what KVS needs is interpreted; other Matroska elements are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ebml import (ATTACHMENTS, AUDIO, BLOCK, BLOCK_GROUP, CHANNELS, CHAPTERS, CLUSTER,
                   CODEC_ID, CODEC_PRIVATE, CRC32, CUES, DEFAULT_DURATION, DOC_TYPE, EBML,
                   FLAG_LACING, INFO, MUXING_APP, NAME, PIXEL_HEIGHT, PIXEL_WIDTH, REFERENCE_BLOCK,
                   SAMPLING_FREQUENCY, SEEK_HEAD, SEGMENT, SEGMENT_CHILDREN, SIMPLE_BLOCK,
                   SIMPLE_TAG, TAG, TAG_NAME, TAG_STRING, TAGS, TARGETS, TIMECODE, TIMECODE_SCALE,
                   TITLE, TRACK_ENTRY, TRACK_NUMBER, TRACK_TYPE, TRACK_UID, TRACKS, UNKNOWN,
                   UNKNOWN_SIZE_VINT, VIDEO, VOID, WRITING_APP, MkvError, decode_float, decode_str,
                   decode_uint, element, element_name, encode_id, encode_size, float_element,
                   iter_children, read_id, read_size, str_element, uint_element)

__all__ = ["MkvError", "Track", "StreamHeader", "Frame", "Cluster", "Tags", "MkvReader",
           "write_header", "write_cluster", "write_tags"]

_SKIPPED_IN_SEGMENT = {SEEK_HEAD, CUES, CHAPTERS, ATTACHMENTS, VOID, CRC32}
_NOT_IN_CLUSTER = (SEGMENT_CHILDREN - {VOID, CRC32}) | {EBML, SEGMENT}


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


@dataclass
class Frame:
    track_number: int
    timecode: int  # absolute PTS in TimecodeScale units (cluster timecode + block offset)
    keyframe: bool
    payload: bytes


@dataclass
class Cluster:
    timecode: int
    frames: list[Frame] = field(default_factory=list)
    offset: int = field(default=0, compare=False)  # reader: where its body starts in the input


@dataclass
class Tags:
    tags: list[tuple[str, str]]  # (TagName, TagString) from every SimpleTag, depth first


# ----------------------------------------------------------------------------- reader

class MkvReader:
    """Incremental Matroska parser. feed() chunks, then close() at end of input."""

    def __init__(self, max_frame_size: int = 16 << 20, max_cluster_size: int = 64 << 20,
                 max_element_size: int = 1 << 20):
        self.max_frame_size = max_frame_size
        self.max_cluster_size = max_cluster_size
        self.max_element_size = max_element_size  # EBML header, Info, Tracks, Tags
        self._buf = bytearray()
        self._pos = 0            # parse position in _buf
        self._abs = 0            # absolute stream offset of _buf[_pos]
        self._skip = 0           # bytes of a skipped element still to discard
        self._stack: list[tuple[int, int | None]] = []  # open (id, absolute end or None)
        self._seen_ebml = False
        self._error: MkvError | None = None
        self._closed = False
        self._new_segment()

    @property
    def position(self) -> int:
        """Number of input bytes fully consumed so far."""
        return self._abs

    def feed(self, data: bytes) -> list:
        """Consume a chunk; return the events it completed, in order. On bad input raises
        MkvError (with `.events` completed before the bad bytes); the reader then stays failed."""
        self._check_usable()
        if self._closed:
            raise MkvError("invalid_mkv", "feed() after close()")
        self._buf += data
        events: list = []
        try:
            while self._step(events):
                pass
        except MkvError as e:
            e.events, self._error = events, e
            raise
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        return events

    def close(self) -> list:
        """End of input: return the events it completes (a pending unknown-size Cluster).
        Raises MkvError("truncated") if the input stopped inside an element."""
        self._check_usable()
        if self._closed:
            return []
        self._closed = True
        events: list = []
        try:
            if self._skip or self._pos < len(self._buf):
                raise MkvError("truncated", f"input ends inside an element at byte {self._abs}")
            while self._stack:
                eid, end = self._stack[-1]
                if end is not None:
                    raise MkvError("truncated", f"input ends inside a {element_name(eid)} "
                                                f"at byte {self._abs}")
                self._finish(events)
        except MkvError as e:
            e.events, self._error = events, e
            raise
        return events

    def _check_usable(self) -> None:
        if self._error:  # a fresh error without the events already handed over
            raise MkvError(self._error.reason, self._error.message)

    # -- state machine

    def _new_segment(self) -> None:
        self._info: dict = {}
        self._tracks: dict[int, Track] | None = None
        self._header_sent = False

    def _consume(self, n: int) -> None:
        self._pos += n
        self._abs += n

    def _step(self, events: list) -> bool:
        buf, pos = self._buf, self._pos
        if self._skip:
            n = min(self._skip, len(buf) - pos)
            self._consume(n)
            self._skip -= n
            return n > 0
        if self._stack and self._stack[-1][1] is not None and self._abs >= self._stack[-1][1]:
            self._finish(events)
            return True
        got = read_id(buf, pos)
        if got is None:
            return False
        eid, idlen = got
        parent, end = self._stack[-1] if self._stack else (None, None)
        if parent is not None and end is None and not self._is_child(parent, eid):
            if parent == SEGMENT and eid not in (EBML, SEGMENT):
                raise MkvError("invalid_mkv", f"unexpected {element_name(eid)} in Segment "
                                              f"at byte {self._abs}")
            self._finish(events)  # an unknown-size element ends at the first non-child ID
            return True
        sz = read_size(buf, pos + idlen)
        if sz is None:
            return False
        size, szlen = sz
        if end is not None and size == UNKNOWN:
            raise MkvError("unsupported", f"unknown-size {element_name(eid)} inside a "
                                          f"known-size {element_name(parent)}")
        if end is not None and self._abs + idlen + szlen + size > end:
            raise MkvError("invalid_mkv", f"{element_name(eid)} overruns its parent "
                                          f"{element_name(parent)}")
        if parent is None:
            return self._top_level(eid, idlen + szlen, size, events)
        if parent == SEGMENT:
            return self._segment_child(eid, idlen + szlen, size, events)
        return self._cluster_child(eid, idlen + szlen, size, events)

    @staticmethod
    def _is_child(parent: int, eid: int) -> bool:
        if parent == SEGMENT:
            return eid in SEGMENT_CHILDREN
        return eid not in _NOT_IN_CLUSTER  # Cluster: anything but a Segment-level/top-level ID

    def _take(self, eid: int, hlen: int, size: int, limit: int) -> bytes | None:
        """The payload of the element at the parse position once fully buffered, else None."""
        if size == UNKNOWN:
            raise MkvError("unsupported", f"unknown-size {element_name(eid)} is not supported")
        if size > limit:
            raise MkvError("too_large", f"{element_name(eid)} of {size} bytes exceeds "
                                        f"the limit of {limit}")
        if len(self._buf) - self._pos < hlen + size:
            return None
        start = self._pos + hlen
        body = bytes(self._buf[start:start + size])
        self._consume(hlen + size)
        return body

    def _start_skip(self, eid: int, hlen: int, size: int, limit: int) -> bool:
        if size == UNKNOWN:
            raise MkvError("unsupported", f"unknown-size {element_name(eid)} cannot be skipped")
        if size > limit:
            raise MkvError("too_large", f"{element_name(eid)} of {size} bytes exceeds "
                                        f"the limit of {limit}")
        self._skip = hlen + size
        return True

    def _top_level(self, eid: int, hlen: int, size: int, events: list) -> bool:
        if eid == EBML:
            body = self._take(eid, hlen, size, self.max_element_size)
            if body is None:
                return False
            doc_type = next((decode_str(v) for i, v in iter_children(body, EBML)
                             if i == DOC_TYPE), "matroska")
            if doc_type not in ("matroska", "webm"):
                raise MkvError("invalid_mkv", f"unsupported EBML DocType {doc_type!r}")
            self._seen_ebml = True
            return True
        if eid == SEGMENT:
            if not self._seen_ebml:
                raise MkvError("invalid_mkv", "Segment without a preceding EBML header")
            self._consume(hlen)
            self._stack.append((SEGMENT, None if size == UNKNOWN else self._abs + size))
            self._new_segment()
            return True
        if eid == VOID:
            return self._start_skip(eid, hlen, size, self.max_element_size)
        raise MkvError("invalid_mkv", f"expected an EBML header or Segment at byte {self._abs}, "
                                      f"found {element_name(eid)}")

    def _segment_child(self, eid: int, hlen: int, size: int, events: list) -> bool:
        if eid in (INFO, TRACKS, TAGS):
            body = self._take(eid, hlen, size, self.max_element_size)
            if body is None:
                return False
            if eid == INFO:
                self._parse_info(body)
            elif eid == TRACKS:
                self._parse_tracks(body, events)
            else:
                events.append(Tags(self._parse_tags(body)))
            return True
        if eid == CLUSTER:
            if not self._header_sent:
                raise MkvError("invalid_mkv", "Cluster before Tracks")
            if size != UNKNOWN and size > self.max_cluster_size:
                raise MkvError("too_large", f"Cluster of {size} bytes exceeds the limit of "
                                            f"{self.max_cluster_size}")
            self._consume(hlen)
            self._stack.append((CLUSTER, None if size == UNKNOWN else self._abs + size))
            self._cluster_start, self._cluster_tc, self._frames = self._abs, None, []
            return True
        if eid in _SKIPPED_IN_SEGMENT:
            return self._start_skip(eid, hlen, size, self.max_cluster_size)
        raise MkvError("invalid_mkv", f"unexpected {element_name(eid)} in Segment "
                                      f"at byte {self._abs}")

    def _cluster_child(self, eid: int, hlen: int, size: int, events: list) -> bool:
        if eid in _NOT_IN_CLUSTER:
            raise MkvError("invalid_mkv", f"{element_name(eid)} inside a known-size Cluster")
        used = self._abs + hlen + size - self._cluster_start
        if size != UNKNOWN and used > self.max_cluster_size:
            raise MkvError("too_large", f"Cluster exceeds the limit of {self.max_cluster_size} "
                                        f"bytes")
        if eid not in (TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP):
            return self._start_skip(eid, hlen, size, self.max_cluster_size)
        limit = 8 if eid == TIMECODE else self.max_frame_size + 64
        body = self._take(eid, hlen, size, limit)
        if body is None:
            return False
        if eid == TIMECODE:
            self._cluster_tc = decode_uint(body)
        elif eid == SIMPLE_BLOCK:
            self._add_block(body, None)
        else:
            block, keyframe = None, True
            for cid, value in iter_children(body, BLOCK_GROUP):
                if cid == BLOCK:
                    block = value
                elif cid == REFERENCE_BLOCK:
                    keyframe = False
            if block is None:
                raise MkvError("invalid_mkv", "BlockGroup without a Block")
            self._add_block(block, keyframe)
        return True

    def _add_block(self, body: bytes, keyframe: bool | None) -> None:
        if self._cluster_tc is None:
            raise MkvError("invalid_mkv", "block before the Cluster Timecode")
        got = read_size(body, 0)
        if got is None or got[0] == UNKNOWN or len(body) < got[1] + 3:
            raise MkvError("invalid_mkv", "malformed block header")
        track, n = got
        if track not in self._tracks:
            raise MkvError("unknown_track", f"block for undeclared track {track}")
        flags = body[n + 2]
        if flags & 0x06:
            raise MkvError("unsupported", "laced blocks are not supported")
        payload = body[n + 3:]
        if len(payload) > self.max_frame_size:
            raise MkvError("too_large", f"frame of {len(payload)} bytes exceeds the limit of "
                                        f"{self.max_frame_size}")
        rel = int.from_bytes(body[n:n + 2], "big", signed=True)
        key = bool(flags & 0x80) if keyframe is None else keyframe
        self._frames.append(Frame(track, self._cluster_tc + rel, key, payload))

    def _finish(self, events: list) -> None:
        eid, _ = self._stack.pop()
        if eid == CLUSTER:
            if self._cluster_tc is None:
                raise MkvError("invalid_mkv", "Cluster without a Timecode")
            events.append(Cluster(self._cluster_tc, self._frames, self._cluster_start))
            self._frames = []

    # -- fully buffered master elements

    def _parse_info(self, body: bytes) -> None:
        if self._tracks is not None:
            raise MkvError("invalid_mkv", "Info after Tracks")
        keys = {TIMECODE_SCALE: "scale", TITLE: "title", MUXING_APP: "muxing_app",
                WRITING_APP: "writing_app"}
        for cid, value in iter_children(body, INFO):
            if cid == TIMECODE_SCALE:
                self._info["scale"] = decode_uint(value)
            elif cid in keys:
                self._info[keys[cid]] = decode_str(value)
        if self._info.get("scale", 1) <= 0:
            raise MkvError("invalid_mkv", "TimecodeScale must be positive")

    def _parse_tracks(self, body: bytes, events: list) -> None:
        if self._tracks is not None:
            raise MkvError("invalid_mkv", "second Tracks element in one Segment")
        tracks: dict[int, Track] = {}
        for cid, entry in iter_children(body, TRACKS):
            if cid != TRACK_ENTRY:
                continue
            t = Track(number=0, uid=0, track_type=0, codec_id="")
            for k, v in iter_children(entry, TRACK_ENTRY):
                if k in (TRACK_NUMBER, TRACK_UID, TRACK_TYPE, DEFAULT_DURATION):
                    attr = {TRACK_NUMBER: "number", TRACK_UID: "uid", TRACK_TYPE: "track_type",
                            DEFAULT_DURATION: "default_duration_ns"}[k]
                    setattr(t, attr, decode_uint(v))
                elif k == CODEC_ID:
                    t.codec_id = decode_str(v)
                elif k == CODEC_PRIVATE:
                    t.codec_private = v
                elif k == NAME:
                    t.name = decode_str(v)
                elif k in (VIDEO, AUDIO):
                    for kk, vv in iter_children(v, k):
                        if kk == PIXEL_WIDTH:
                            t.width = decode_uint(vv)
                        elif kk == PIXEL_HEIGHT:
                            t.height = decode_uint(vv)
                        elif kk == SAMPLING_FREQUENCY:
                            t.sampling_frequency = decode_float(vv)
                        elif kk == CHANNELS:
                            t.channels = decode_uint(vv)
            if t.number == 0 or t.number in tracks:
                raise MkvError("invalid_mkv", f"missing or duplicate TrackNumber {t.number}")
            tracks[t.number] = t
        self._tracks = tracks
        info = self._info
        events.append(StreamHeader(info.get("scale", 1_000_000), list(tracks.values()),
                                   info.get("title"), info.get("muxing_app"),
                                   info.get("writing_app")))
        self._header_sent = True

    def _parse_tags(self, body: bytes) -> list[tuple[str, str]]:
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


# ----------------------------------------------------------------------------- writer

def write_header(header: StreamHeader, *, muxing_app: str = "kvslite") -> bytes:
    """EBML header + Segment start (unknown size) + Info + Tracks."""
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
    entries = b""
    for t in header.tracks:
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
        entries += element(TRACK_ENTRY, e)
    segment_start = encode_id(SEGMENT) + UNKNOWN_SIZE_VINT
    return ebml + segment_start + element(INFO, info) + element(TRACKS, entries)


def write_cluster(cluster: Cluster, *, tags: list[tuple[str, str]] | None = None,
                  unknown_size: bool = False) -> tuple[bytes, list[int]]:
    """One Cluster (Timecode + one SimpleBlock per frame, no lacing), known size unless
    `unknown_size`; `tags`, if given, are appended as a segment-level Tags element after it.
    Returns (bytes, payload_offsets): frames[i].payload == data[off[i]:off[i] + len(payload)]."""
    if cluster.timecode < 0:
        raise MkvError("timecode_range", f"negative cluster timecode {cluster.timecode}")
    parts = [uint_element(TIMECODE, cluster.timecode)]
    offsets, pos = [], len(parts[0])
    for f in cluster.frames:
        rel = f.timecode - cluster.timecode
        if not -32768 <= rel <= 32767:
            raise MkvError("timecode_range", f"frame timecode {f.timecode} is {rel} from the "
                                             f"cluster timecode {cluster.timecode}, outside int16")
        head = encode_size(f.track_number) + rel.to_bytes(2, "big", signed=True)
        head += bytes([0x80 if f.keyframe else 0])
        block_head = encode_id(SIMPLE_BLOCK) + encode_size(len(head) + len(f.payload)) + head
        offsets.append(pos + len(block_head))
        parts += (block_head, f.payload)
        pos += len(block_head) + len(f.payload)
    cluster_head = encode_id(CLUSTER) + (UNKNOWN_SIZE_VINT if unknown_size else encode_size(pos))
    data = b"".join([cluster_head, *parts])
    if tags:
        data += write_tags(tags)
    return data, [o + len(cluster_head) for o in offsets]


def write_tags(tags: list[tuple[str, str]]) -> bytes:
    """A segment-level Tags element with one Tag (empty Targets) holding one SimpleTag per pair."""
    body = element(TARGETS, b"") + b"".join(
        element(SIMPLE_TAG, str_element(TAG_NAME, name) + str_element(TAG_STRING, value))
        for name, value in tags)
    return element(TAGS, element(TAG, body))
