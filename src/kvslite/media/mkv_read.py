"""Incremental Matroska reader: see `kvslite.media.mkv`."""

from __future__ import annotations

from .ebml import (
    ATTACHMENTS, BLOCK_GROUP, CHAPTERS, CLUSTER, CRC32, CUES, EBML, INFO, SEEK_HEAD, SEGMENT,
    SEGMENT_CHILDREN, SIMPLE_BLOCK, TAGS, TIMECODE, TRACKS, UNKNOWN, UNKNOWN_SIZE_VINT, VOID,
    MkvError, decode_uint, element_name, encode_id, read_id, read_size,
)
from .mkv_model import Cluster, Frame, StreamHeader, Tags, Track
from .mkv_parse import check_doc_type, parse_block, parse_info, parse_tags, parse_tracks

_SKIPPED_IN_SEGMENT = {SEEK_HEAD, CUES, CHAPTERS, ATTACHMENTS, VOID, CRC32}
_NOT_IN_CLUSTER = (SEGMENT_CHILDREN - {VOID, CRC32}) | {EBML, SEGMENT}
# The segment's size belongs to the upload, not to a fragment stored with this header.
_RAW_SEGMENT_START = encode_id(SEGMENT) + UNKNOWN_SIZE_VINT
_BLOCK_OVERHEAD = 64          # SimpleBlock: element and block headers around the payload
_BLOCK_GROUP_OVERHEAD = 1 << 16  # BlockGroup: room for BlockAdditions, ReferenceBlock, ...


class MkvReader:
    """Incremental Matroska parser. feed() chunks, then close() at end of input."""

    def __init__(self, max_frame_size: int = 16 << 20, max_cluster_size: int = 64 << 20,
                 max_element_size: int = 1 << 20, max_cluster_frames: int = 1 << 20):
        self.max_frame_size = max_frame_size
        self.max_cluster_frames = max_cluster_frames  # bounds the per-frame bookkeeping
        self.max_cluster_size = max_cluster_size
        self.max_element_size = max_element_size  # EBML header, Info, Tracks, Tags
        self._buf = bytearray()
        self._pos = 0            # parse position in _buf
        self._abs = 0            # absolute stream offset of _buf[_pos]
        self._skip = 0           # bytes of a skipped element still to discard
        self._stack: list[tuple[int, int | None]] = []  # open (id, absolute end or None)
        self._ebml_raw = b""  # the last EBML header element, as received (none yet)
        self._error: MkvError | None = None
        self._closed = False
        self._cluster_start = 0
        self._cluster_tc: int | None = None  # until the Cluster's Timecode arrives
        self._frames: list[Frame] = []
        self.unread = False  # the last feed() stopped at max_steps with input still to read
        self._new_segment()

    @property
    def position(self) -> int:
        """Number of input bytes fully consumed so far."""
        return self._abs

    def feed(self, data: bytes, max_steps: int | None = None) -> list:
        """Consume a chunk; return the events it completed, in order. On bad input raises
        MkvError (with `.events` completed before the bad bytes); the reader then stays failed.
        With `max_steps`, stop after that many elements steps and leave the rest buffered
        (`unread` tells; feed(b"") goes on): bounded work for a thread that must not block."""
        self._check_usable()
        if self._closed:
            raise MkvError("invalid_mkv", "feed() after close()")
        self._buf += data
        events: list = []
        steps = 0
        self.unread = False
        budget = max_steps if max_steps is not None else 1 << 62
        try:
            while steps < budget:
                blocks = self._simple_blocks(budget - steps)
                if blocks:
                    steps += blocks
                    continue
                if not self._step(events):
                    break
                steps += 1
            else:
                self.unread = True
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
        self._info_raw: list[bytes] = []
        self._tracks: dict[int, Track] | None = None

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
                                          f"known-size {_name(parent)}")
        if end is not None and self._abs + idlen + szlen + size > end:
            raise MkvError("invalid_mkv", f"{element_name(eid)} overruns its parent "
                                          f"{_name(parent)}")
        if parent is None:
            return self._top_level(eid, idlen + szlen, size)
        if parent == SEGMENT:
            return self._segment_child(eid, idlen + szlen, size, events)
        return self._cluster_child(eid, idlen + szlen, size)

    def _simple_blocks(self, limit: int) -> int:
        """The fast path of a camera's stream: read up to `limit` SimpleBlocks that lie whole
        in the buffer, inside a Cluster whose Timecode came; how many. It only skips
        `_step`'s per-element dispatch: each block goes through `_add_block` as there, and
        anything else (another element, a partial block, a size `_step` would refuse) is
        left to `_step`, which reads it and names the fault."""
        if self._skip or self._cluster_tc is None or not self._stack:
            return 0
        parent, end = self._stack[-1]
        if parent != CLUSTER:
            return 0
        cluster_end = self._cluster_start + self.max_cluster_size
        if end is not None:
            cluster_end = min(end, cluster_end)
        max_block = self.max_frame_size + _BLOCK_OVERHEAD
        buf, done = self._buf, 0
        while done < limit:
            pos = self._pos
            if pos + 2 > len(buf) or buf[pos] != SIMPLE_BLOCK:
                break
            szlen = 9 - buf[pos + 1].bit_length()  # the block's size: a vint of 1 to 8 bytes
            if not 1 <= szlen <= 8 or pos + 1 + szlen > len(buf):
                break
            size = int.from_bytes(buf[pos + 1:pos + 1 + szlen], "big") & ((1 << 7 * szlen) - 1)
            stop = pos + 1 + szlen + size
            if size >= (1 << 7 * szlen) - 1 or size > max_block or stop > len(buf) \
                    or self._abs + stop - pos > cluster_end:
                break
            with memoryview(buf) as view, view[pos:stop] as part:
                block = bytes(part)
            self._consume(stop - pos)
            self._add_block(block, 1 + szlen, False)
            done += 1
        return done

    @staticmethod
    def _is_child(parent: int, eid: int) -> bool:
        if parent == SEGMENT:
            return eid in SEGMENT_CHILDREN
        return eid not in _NOT_IN_CLUSTER  # Cluster: anything but a Segment-level/top-level ID

    def _take(self, eid: int, hlen: int, size: int, limit: int) -> bytes | None:
        """The whole element (header included) at the parse position once fully buffered,
        else None."""
        if size == UNKNOWN:
            raise MkvError("unsupported", f"unknown-size {element_name(eid)} is not supported")
        if size > limit:
            raise MkvError("too_large", f"{element_name(eid)} of {size} bytes exceeds "
                                        f"the limit of {limit}")
        if len(self._buf) - self._pos < hlen + size:
            return None
        with memoryview(self._buf) as view:  # one copy, and no export left to block resizing
            with view[self._pos:self._pos + hlen + size] as part:
                data = bytes(part)
        self._consume(hlen + size)
        return data

    def _start_skip(self, eid: int, hlen: int, size: int, limit: int) -> bool:
        if size == UNKNOWN:
            raise MkvError("unsupported", f"unknown-size {element_name(eid)} cannot be skipped")
        if size > limit:
            raise MkvError("too_large", f"{element_name(eid)} of {size} bytes exceeds "
                                        f"the limit of {limit}")
        self._skip = hlen + size
        return True

    def _top_level(self, eid: int, hlen: int, size: int) -> bool:
        if eid == EBML:
            data = self._take(eid, hlen, size, self.max_element_size)
            if data is None:
                return False
            check_doc_type(data[hlen:])
            self._ebml_raw = data
            return True
        if eid == SEGMENT:
            if not self._ebml_raw:
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
            data = self._take(eid, hlen, size, self.max_element_size)
            if data is None:
                return False
            if eid == INFO:
                self._add_info(data, hlen)
            elif eid == TRACKS:
                events.append(self._add_tracks(data, hlen))
            else:
                events.append(Tags(parse_tags(data[hlen:])))
            return True
        if eid == CLUSTER:
            if self._tracks is None:
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

    def _cluster_child(self, eid: int, hlen: int, size: int) -> bool:
        if eid in _NOT_IN_CLUSTER:
            raise MkvError("invalid_mkv", f"{element_name(eid)} inside a known-size Cluster")
        used = self._abs + hlen + size - self._cluster_start
        if size != UNKNOWN and used > self.max_cluster_size:
            raise MkvError("too_large", f"Cluster exceeds the limit of {self.max_cluster_size} "
                                        f"bytes")
        if eid not in (TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP):
            return self._start_skip(eid, hlen, size, self.max_cluster_size)
        limit = {TIMECODE: 8, SIMPLE_BLOCK: self.max_frame_size + _BLOCK_OVERHEAD,
                 BLOCK_GROUP: self.max_frame_size + _BLOCK_GROUP_OVERHEAD}[eid]
        data = self._take(eid, hlen, size, limit)
        if data is None:
            return False
        if eid == TIMECODE:
            self._cluster_tc = decode_uint(data[hlen:])
        else:
            self._add_block(data, hlen, eid == BLOCK_GROUP)
        return True

    def _add_block(self, data: bytes, hlen: int, group: bool) -> None:
        if self._cluster_tc is None:
            raise MkvError("invalid_mkv", "block before the Cluster Timecode")
        track, rel, key, start, end = parse_block(data, hlen, group, self._tracks)
        if end - start > self.max_frame_size:
            raise MkvError("too_large", f"frame of {end - start} bytes exceeds the limit of "
                                        f"{self.max_frame_size}")
        if len(self._frames) >= self.max_cluster_frames:
            raise MkvError("too_many_frames", f"a Cluster holds more than "
                                              f"{self.max_cluster_frames} frames")
        self._frames.append(Frame(track, self._cluster_tc + rel, key, block=data,
                                  payload_offset=start, payload_size=end - start))

    def _finish(self, events: list) -> None:
        eid, _ = self._stack.pop()
        if eid == CLUSTER:
            if self._cluster_tc is None:
                raise MkvError("invalid_mkv", "Cluster without a Timecode")
            events.append(Cluster(self._cluster_tc, self._frames, self._cluster_start))
            self._frames = []

    # -- header elements, kept as received

    def _add_info(self, data: bytes, hlen: int) -> None:
        if self._tracks is not None:
            raise MkvError("invalid_mkv", "Info after Tracks")
        parse_info(data[hlen:], self._info)
        self._info_raw.append(data)

    def _add_tracks(self, data: bytes, hlen: int) -> StreamHeader:
        if self._tracks is not None:
            raise MkvError("invalid_mkv", "second Tracks element in one Segment")
        self._tracks = parse_tracks(data[hlen:])
        raw = b"".join([self._ebml_raw, _RAW_SEGMENT_START, *self._info_raw, data])
        info = self._info
        return StreamHeader(info.get("scale", 1_000_000), list(self._tracks.values()),
                            info.get("title"), info.get("muxing_app"), info.get("writing_app"),
                            raw=raw)


def _name(parent: int | None) -> str:
    return element_name(parent) if parent is not None else "the stream"
