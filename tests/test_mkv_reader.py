"""MkvReader's fast path for whole SimpleBlocks (`_simple_blocks`, taken for nearly every
byte a camera sends) reads exactly what its element-by-element path reads: the same
frames from good input, and the same error, at the same point, from bad input. Compared on
generated streams with odd blocks (tracks 127 and 0xFF, lacing, empty and oversized
frames, long size fields, BlockGroups, Voids) under byte mutations and random chunking."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvs_media import vint

from kvslite.media import ebml, mkv
from kvslite.media.ebml import MkvError, element, uint_element
from kvslite.media.mkv_model import Track
from kvslite.media.mkv_read import MkvReader

MAX_FRAME = 200  # small limits, so generated streams reach them
MAX_FRAMES = 12
MAX_CLUSTER = 4000


class ElementByElement(MkvReader):
    """The reader without its fast path."""

    def _simple_blocks(self, limit: int) -> int:
        return 0


def reader(cls: type[MkvReader]) -> MkvReader:
    return cls(max_frame_size=MAX_FRAME, max_cluster_size=MAX_CLUSTER,
               max_cluster_frames=MAX_FRAMES)


def header() -> bytes:
    tracks = [Track(1, 11, 1, "V_MPEG4/ISO/AVC", b"\x01\x64\x00\x1f\xff"),
              Track(127, 12, 2, "A_AAC", b"\x12\x10")]
    return mkv.write_header(mkv.StreamHeader(1_000_000, tracks))


@st.composite
def block(draw) -> bytes:
    track = draw(st.sampled_from([0x81, 0xFF, 0xFF, 0x80 | 127, 0x82, 0x40]))
    flags = draw(st.sampled_from([0x80, 0x00, 0x02, 0x06, 0x81]))
    rel = draw(st.integers(-40, 40)).to_bytes(2, "big", signed=True)
    payload = draw(st.binary(min_size=0, max_size=MAX_FRAME + 8))
    body = bytes([track]) + rel + bytes([flags]) + payload
    if track == 0x40:  # a 2-byte track number vint
        body = b"\x40\x01" + rel + bytes([flags]) + payload
    if draw(st.booleans()):  # a size field wider than it needs
        return (ebml.encode_id(ebml.SIMPLE_BLOCK)
                + vint(len(body), draw(st.integers(2, 8))) + body)
    kind = draw(st.sampled_from(["simple"] * 6 + ["group", "void"]))
    if kind == "group":
        return element(ebml.BLOCK_GROUP, element(ebml.BLOCK, body))
    if kind == "void":
        return element(ebml.VOID, payload[:10])
    return element(ebml.SIMPLE_BLOCK, body)


@st.composite
def stream(draw) -> bytes:
    clusters = []
    for k in range(draw(st.integers(1, 3))):
        blocks = draw(st.lists(block(), min_size=0, max_size=MAX_FRAMES + 2))
        body = uint_element(ebml.TIMECODE, 1000 * k) + b"".join(blocks)
        if draw(st.booleans()):
            clusters.append(element(ebml.CLUSTER, body))
        else:  # unknown size, as the producer SDK sends
            clusters.append(ebml.encode_id(ebml.CLUSTER) + b"\x01\xff\xff\xff\xff\xff\xff\xff"
                            + body)
    data = bytearray(header() + b"".join(clusters))
    for _ in range(draw(st.integers(0, 3))):  # mutations past the header
        at = draw(st.integers(len(header()), max(len(header()), len(data) - 1)))
        if at < len(data):
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def read(cls: type[MkvReader], data: bytes, cuts: list[int]) -> tuple[list, tuple | None]:
    """What a reader makes of `data` fed in pieces cut at `cuts`: its events, each as plain
    values, and its error (reason, message), if any."""
    r, events, error = reader(cls), [], None
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            events += r.feed(data[a:b])
        events += r.close()
    except MkvError as e:
        events += e.events
        error = (e.reason, str(e))
    return [_plain(event) for event in events], error


def _plain(event) -> tuple:
    if isinstance(event, mkv.Cluster):
        return ("cluster", event.timecode, event.offset,
                [(f.track_number, f.timecode, f.keyframe, f.block, f.payload)
                 for f in event.frames])
    return (type(event).__name__,)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=stream(), cuts=st.lists(st.integers(0, 6000), max_size=6))
def test_the_fast_path_reads_what_the_element_path_reads(data, cuts):
    expected = read(ElementByElement, data, [])
    assert read(MkvReader, data, cuts) == expected
    assert read(MkvReader, data, []) == expected


def test_the_fast_path_is_taken_for_a_cameras_blocks():
    """A whole cluster of plain SimpleBlocks is read by the fast path: 10 fewer element
    steps than element by element, and the same frames."""
    blocks = [element(ebml.SIMPLE_BLOCK, b"\x81\x00\x00\x80" + bytes([i]) * 100)
              for i in range(10)]
    data = header() + element(ebml.CLUSTER, uint_element(ebml.TIMECODE, 0) + b"".join(blocks))
    steps = {}
    clusters = {}
    for cls in (MkvReader, ElementByElement):
        r = reader(cls)
        step, steps[cls] = r._step, 0

        def counted(events, step=step, cls=cls):
            steps[cls] += 1
            return step(events)

        r._step = counted  # type: ignore[method-assign]
        clusters[cls] = [_plain(e) for e in r.feed(data) if isinstance(e, mkv.Cluster)]
    assert steps[ElementByElement] - steps[MkvReader] == 10
    assert clusters[MkvReader] == clusters[ElementByElement]
    assert clusters[MkvReader][0][3][9][4] == bytes([9]) * 100
