"""Tests for kvslite.media.mkv: incremental reader, writer, and FFmpeg interoperability."""

import io

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvslite.media import ebml
from kvslite.media.ebml import element, encode_id, encode_size, read_id, read_size, str_element
from kvslite.media.mkv import (Cluster, Frame, MkvError, MkvReader, StreamHeader, Tags, Track,
                               write_cluster, write_header, write_tags)
from kvslite.media.synthetic import clusters, stream_header, to_mkv

T0 = 1_795_756_324_836  # an epoch-ms producer timecode, as KVS ABSOLUTE timecodes look
EOF_TAGS = [("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]

VIDEO = Track(1, 11, 1, "V_MPEG4/ISO/AVC", b"\x01\x64\x00\x1f", "video", 320, 240,
              None, None, 33_333_333)
AUDIO = Track(2, 22, 2, "A_AAC", b"\x12\x10", "audio", None, None, 48000.0, 2, None)
HEADER = StreamHeader(1_000_000, [VIDEO, AUDIO], None, "kvslite", "kvslite")
HEADER_BYTES = write_header(HEADER)


def to_unknown_size(cluster_bytes: bytes) -> bytes:
    """Rewrite a written known-size Cluster to the unknown-size form the KVS producer sends."""
    assert cluster_bytes[:4] == encode_id(ebml.CLUSTER)
    _, size_len = read_size(cluster_bytes, 4)
    return cluster_bytes[:4] + b"\xff" + cluster_bytes[4 + size_len:]


def feed_all(data: bytes, cuts=(), reader=None) -> list:
    reader = reader or MkvReader()
    events, prev = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += reader.feed(data[prev:cut])
        prev = cut
    return events + reader.close()


def fragment(tc: int, n: int = 3, step: int = 33, size: int = 50) -> Cluster:
    frames = [Frame(1, tc + i * step, i == 0, bytes([i % 256]) * (size + i)) for i in range(n)]
    frames.append(Frame(2, tc + 5, True, b"aac-frame"))
    return Cluster(tc, frames)


def payloads_at(data: bytes, offsets: list[int], cluster: Cluster) -> list[bytes]:
    return [data[o:o + len(f.payload)] for o, f in zip(offsets, cluster.frames)]


def rich_body() -> tuple[bytes, list]:
    """A body mixing most of what a reader meets, and the events it must produce."""
    c1, c2, c3 = fragment(T0), fragment(T0 + 1000, n=5), fragment(T0 + 2000, n=2)
    meta = [("AWS_KINESISVIDEO_FRAGMENT_NUMBER", "123"), ("location", "lab")]
    p_block = (element(ebml.BLOCK, b"\x81\x00\x21\x00P-frame")
               + element(ebml.REFERENCE_BLOCK, b"\xdf"))
    i_block = element(ebml.BLOCK, b"\x81\x00\x42\x00I-frame")
    c3_bytes, _ = write_cluster(c3)
    c3_body = c3_bytes[4 + read_size(c3_bytes, 4)[1]:]
    c3_body += (element(ebml.VOID, b"\0" * 7) + element(ebml.BLOCK_GROUP, p_block)
                + element(0x5854, b"\x81")  # SilentTracks: a Cluster child we skip
                + element(ebml.BLOCK_GROUP, i_block) + element(ebml.CRC32, b"abcd"))
    c3_bytes = encode_id(ebml.CLUSTER) + encode_size(len(c3_body)) + c3_body
    c3.frames += [Frame(1, T0 + 2000 + 0x21, False, b"P-frame"),
                  Frame(1, T0 + 2000 + 0x42, True, b"I-frame")]
    body = (HEADER_BYTES + element(ebml.VOID, b"\0" * 3) + write_tags(meta)
            + to_unknown_size(write_cluster(c1)[0]) + element(ebml.CUES, b"\x00" * 10)
            + write_cluster(c2)[0] + c3_bytes + write_tags(EOF_TAGS))
    return body, [HEADER, Tags(meta), c1, c2, c3, Tags(EOF_TAGS)]


# ----------------------------------------------------------------------------- EBML primitives

@given(st.integers(0, 2**56 - 2))
def test_size_vint_round_trip(n):
    enc = encode_size(n)
    assert read_size(enc, 0) == (n, len(enc))


@pytest.mark.parametrize("length", range(1, 9))
def test_size_vint_non_minimal_and_unknown(length):
    assert read_size((5 | 1 << 7 * length).to_bytes(length, "big"), 0) == (5, length)
    all_ones = (1 << 8 * length) - 1 >> (length - 1)  # marker bit + all-ones value
    assert read_size(all_ones.to_bytes(length, "big"), 0) == (ebml.UNKNOWN, length)
    assert read_size(all_ones.to_bytes(length, "big")[:-1], 0) is None  # needs more bytes


def test_id_lengths_and_invalid_vints():
    for eid in (ebml.VOID, ebml.DOC_TYPE, ebml.TIMECODE_SCALE, ebml.CLUSTER):
        enc = encode_id(eid)
        assert read_id(enc + b"\x80", 0) == (eid, len(enc))
        assert read_id(enc[:-1], 0) is None  # needs more bytes
    for bad in (b"\x00", b"\x08\x00\x00\x00\x00", b"\xff", b"\x80"):  # too long / reserved
        with pytest.raises(MkvError):
            read_id(bad, 0)
    with pytest.raises(MkvError):
        read_size(b"\x00" * 9, 0)


# ----------------------------------------------------------------------------- reader

def test_rich_body_in_one_piece():
    body, expected = rich_body()
    assert feed_all(body) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rich_body_any_chunking(data):
    body, expected = rich_body()
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=40))
    assert feed_all(body, cuts) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_round_trip_real_video_any_chunking(h264_video, data):
    unknown = data.draw(st.booleans())
    body = to_mkv(h264_video, T0, unknown_size_clusters=unknown, end_of_fragment=True)
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=20))
    events = feed_all(body, cuts)
    assert events == [stream_header(h264_video), *clusters(h264_video, T0), Tags(EOF_TAGS)]


def test_events_appear_at_the_right_byte():
    """Header at the last byte of Tracks; a known-size Cluster at its last byte; an
    unknown-size Cluster once the ID of the next element (Cluster or Tags) has arrived."""
    c1, c2, c3 = fragment(T0), fragment(T0 + 500), fragment(T0 + 1000)
    b1 = to_unknown_size(write_cluster(c1)[0])
    b2 = write_cluster(c2)[0]
    b3 = to_unknown_size(write_cluster(c3)[0])
    body = HEADER_BYTES + b1 + b2 + b3 + write_tags(EOF_TAGS)
    reader, seen = MkvReader(), []
    for i in range(len(body)):
        seen += [(i, ev) for ev in reader.feed(body[i:i + 1])]
    assert reader.close() == []
    s2 = len(HEADER_BYTES) + len(b1)
    s3 = s2 + len(b2)
    s4 = s3 + len(b3)
    assert seen == [(len(HEADER_BYTES) - 1, HEADER), (s2 + 3, c1), (s3 - 1, c2), (s4 + 3, c3),
                    (len(body) - 1, Tags(EOF_TAGS))]
    assert reader.position == len(body)


def test_end_of_fragment_tags_complete_the_last_cluster_before_close():
    c = fragment(T0)
    body = HEADER_BYTES + to_unknown_size(write_cluster(c)[0]) + write_tags(EOF_TAGS)
    reader = MkvReader()
    assert reader.feed(body) == [HEADER, c, Tags(EOF_TAGS)]
    assert reader.close() == []


def test_unknown_size_cluster_is_flushed_at_close():
    c = fragment(T0)
    reader = MkvReader()
    assert reader.feed(HEADER_BYTES + to_unknown_size(write_cluster(c)[0])) == [HEADER]
    assert reader.close() == [c]


def test_second_ebml_header_mid_body(h264_video, h265_video):
    first = to_mkv(h264_video, T0, unknown_size_clusters=True)
    second = to_mkv(h265_video, T0 + 5000, unknown_size_clusters=True, end_of_fragment=True)
    reader = MkvReader()
    events = reader.feed(first)
    assert events[0] == stream_header(h264_video)
    assert events[1:] == clusters(h264_video, T0)[:-1]  # the last one is still open
    # The EBML ID alone ends the open Cluster (and the unknown-size Segment).
    assert reader.feed(second[:4]) == clusters(h264_video, T0)[-1:]
    events = reader.feed(second[4:]) + reader.close()
    assert events == [stream_header(h265_video), *clusters(h265_video, T0 + 5000), Tags(EOF_TAGS)]


def test_known_size_segment_then_another_segment():
    size, size_len = read_size(HEADER_BYTES, 4)
    ebml_end = 4 + size_len + size
    segment_start = encode_id(ebml.SEGMENT) + ebml.UNKNOWN_SIZE_VINT
    assert HEADER_BYTES[ebml_end:ebml_end + 12] == segment_start
    content = HEADER_BYTES[ebml_end + 12:] + write_cluster(fragment(T0))[0]
    known = (HEADER_BYTES[:ebml_end] + encode_id(ebml.SEGMENT) + encode_size(len(content))
             + content)
    body = known + HEADER_BYTES + write_cluster(fragment(T0 + 100))[0]
    expected = [HEADER, fragment(T0), HEADER, fragment(T0 + 100)]
    assert feed_all(body, cuts=range(1, len(body), 7)) == expected
    reader = MkvReader()  # the known-size Segment and its last Cluster end at their last byte
    assert reader.feed(known) == [HEADER, fragment(T0)]
    assert reader.close() == []


def _wide(eid: int, payload: bytes, width: int) -> bytes:
    """An element whose size uses a fixed, non-minimal vint width, as the KVS producer writes."""
    return encode_id(eid) + (len(payload) | 1 << 7 * width).to_bytes(width, "big") + payload


def test_producer_sdk_byte_layout():
    """The layout the KVS producer SDK sends: wide fixed-width sizes, SegmentUID, Position,
    8-byte Timecodes, unknown-size Segment and Clusters, Tags per fragment."""
    track = (b"\xd7\x81\x01" + b"\x73\xc5\x88" + (42).to_bytes(8, "big") + b"\x83\x81\x01"
             + str_element(ebml.CODEC_ID, "V_MPEG4/ISO/AVC") + str_element(ebml.NAME, "kvs video")
             + element(ebml.CODEC_PRIVATE, b"\x01\x42\x00\x1e")
             + _wide(ebml.VIDEO, b"\xb0\x82\x05\x00\xba\x82\x02\xd0", 4))
    info = (element(0x73A4, bytes(16)) + b"\x2a\xd7\xb1\x88" + (1_000_000).to_bytes(8, "big")
            + str_element(ebml.TITLE, "kinesis_video") + str_element(ebml.MUXING_APP, "mux")
            + str_element(ebml.WRITING_APP, "write"))
    ebml_header = HEADER_BYTES[:HEADER_BYTES.index(encode_id(ebml.SEGMENT))]
    body = (ebml_header + encode_id(ebml.SEGMENT) + b"\xff" + _wide(ebml.INFO, info, 2)
            + _wide(ebml.TRACKS, _wide(ebml.TRACK_ENTRY, track, 4), 4))

    def cluster(tc: int, frames: list[tuple[int, int, bytes]]) -> bytes:
        out = encode_id(ebml.CLUSTER) + b"\xff" + b"\xe7\x88" + tc.to_bytes(8, "big")
        out += b"\xa7\x81\x00"  # Position
        for rel, flags, data in frames:
            block = b"\x81" + rel.to_bytes(2, "big") + bytes([flags]) + data
            out += _wide(ebml.SIMPLE_BLOCK, block, 8)
        return out

    def tags(name: str, value: str) -> bytes:
        simple = _wide(ebml.TAG_NAME, name.encode(), 8) + _wide(ebml.TAG_STRING, value.encode(), 8)
        return _wide(ebml.TAGS, _wide(ebml.TAG, _wide(ebml.SIMPLE_TAG, simple, 8), 8), 8)

    body += cluster(T0, [(0, 0x80, b"IDR"), (40, 0, b"P1")]) + tags("app", "x")
    body += cluster(T0 + 80, [(0, 0x80, b"IDR2")]) + tags(*EOF_TAGS[0])
    header = StreamHeader(1_000_000, [Track(1, 42, 1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e",
                                            "kvs video", 1280, 720, None, None, None)],
                          "kinesis_video", "mux", "write")
    expected = [header, Cluster(T0, [Frame(1, T0, True, b"IDR"), Frame(1, T0 + 40, False, b"P1")]),
                Tags([("app", "x")]), Cluster(T0 + 80, [Frame(1, T0 + 80, True, b"IDR2")]),
                Tags(EOF_TAGS)]
    reader = MkvReader()
    assert reader.feed(body) == expected  # all of it before close(): nothing left pending
    assert reader.close() == []


def test_timecode_scale_title_and_nested_simple_tags():
    header = StreamHeader(100_000, [VIDEO], "my title", "app", "writer")
    inner = element(ebml.SIMPLE_TAG, str_element(ebml.TAG_NAME, "inner"))
    outer = element(ebml.SIMPLE_TAG, str_element(ebml.TAG_NAME, "outer")
                    + str_element(ebml.TAG_STRING, "1") + inner)
    other = element(ebml.SIMPLE_TAG, str_element(ebml.TAG_NAME, "x")
                    + str_element(ebml.TAG_STRING, "y"))
    tags = element(ebml.TAGS, element(ebml.TAG, element(ebml.TARGETS, b"") + outer)
                   + element(ebml.TAG, other))
    body = write_header(header, muxing_app="app") + tags
    assert feed_all(body) == [header, Tags([("outer", "1"), ("inner", ""), ("x", "y")])]


# ----------------------------------------------------------------------------- reader errors

def expect_error(body: bytes, reason: str, reader=None, cuts=()) -> MkvError:
    with pytest.raises(MkvError) as info:
        feed_all(body, cuts, reader)
    assert info.value.reason == reason, info.value
    return info.value


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 16, bytes(range(1, 60)),
                                     b"\xec\x81\x00" + b"\x42\x86\x81\x01"])  # Void, then junk
def test_garbage_at_start(garbage):
    expect_error(garbage, "invalid_mkv")


def test_wrong_doctype_and_segment_without_header():
    expect_error(element(ebml.EBML, str_element(ebml.DOC_TYPE, "notmkv")), "invalid_mkv")
    segment_at = HEADER_BYTES.index(encode_id(ebml.SEGMENT))
    expect_error(HEADER_BYTES[segment_at:], "invalid_mkv")


@pytest.mark.parametrize("junk", [b"\x42\x42garbage!", b"\x00junk", b"\x81\x81\x00"])
def test_garbage_after_a_cluster_keeps_completed_events(junk):
    c = fragment(T0)
    body = HEADER_BYTES + write_cluster(c)[0] + junk
    err = expect_error(body, "invalid_mkv")
    assert err.events == [HEADER, c]  # the complete cluster is still handed over
    reader = MkvReader()
    with pytest.raises(MkvError):
        reader.feed(body)
    with pytest.raises(MkvError) as info:  # the reader stays failed
        reader.feed(b"")
    assert info.value.events == [] and info.value.reason == err.reason


@pytest.mark.parametrize("cut", [3, 30, -200, -3, -1])
def test_truncated(cut):
    body = HEADER_BYTES + write_cluster(fragment(T0, size=300))[0]
    err = expect_error(body[:cut], "truncated")
    assert "input ends inside" in str(err)


def test_block_before_timecode():
    block = element(ebml.SIMPLE_BLOCK, b"\x81\x00\x00\x80frame")
    body = HEADER_BYTES + encode_id(ebml.CLUSTER) + b"\xff" + block
    assert "before the Cluster Timecode" in str(expect_error(body, "invalid_mkv"))


def test_cluster_before_tracks_and_undeclared_track():
    tracks_at = HEADER_BYTES.index(encode_id(ebml.TRACKS))
    expect_error(HEADER_BYTES[:tracks_at] + write_cluster(fragment(T0))[0], "invalid_mkv")
    bad = write_cluster(Cluster(T0, [Frame(7, T0, True, b"x")]))[0]
    assert "undeclared track 7" in str(expect_error(HEADER_BYTES + bad, "unknown_track"))


@pytest.mark.parametrize("lacing", [0x02, 0x04, 0x06])
def test_laced_blocks_are_rejected(lacing):
    block = element(ebml.SIMPLE_BLOCK, bytes([0x81, 0, 0, 0x80 | lacing, 1, 3]) + b"abcdef")
    body = HEADER_BYTES + element(ebml.CLUSTER, element(ebml.TIMECODE, b"\x01") + block)
    assert "lac" in str(expect_error(body, "unsupported"))


def test_size_limits():
    body = HEADER_BYTES + write_cluster(fragment(T0, size=5000))[0]
    expect_error(body, "too_large", MkvReader(max_frame_size=4000))
    expect_error(body, "too_large", MkvReader(max_cluster_size=8000))
    unknown = HEADER_BYTES + to_unknown_size(write_cluster(fragment(T0, n=10, size=1000))[0])
    expect_error(unknown, "too_large", MkvReader(max_cluster_size=5000),
                 cuts=range(0, len(unknown), 100))
    # A huge declared size fails as soon as the element header is read, with no payload yet.
    huge = HEADER_BYTES + encode_id(ebml.CLUSTER) + b"\xff" + element(ebml.TIMECODE, b"\x01")
    huge += encode_id(ebml.SIMPLE_BLOCK) + encode_size(1 << 40)
    with pytest.raises(MkvError) as info:
        MkvReader().feed(huge)
    assert info.value.reason == "too_large"


def test_overrun_and_unknown_size_header_elements():
    tracks_at = HEADER_BYTES.index(encode_id(ebml.TRACKS)) + 4
    size, size_len = read_size(HEADER_BYTES, tracks_at)
    rest = HEADER_BYTES[tracks_at + size_len:]
    expect_error(HEADER_BYTES[:tracks_at] + b"\xff" + rest, "unsupported")
    # A child element that runs past the end of its known-size parent.
    cluster = element(ebml.CLUSTER, element(ebml.TIMECODE, b"\x01") + b"\xa3\x90short")
    expect_error(HEADER_BYTES + cluster + b"\0" * 20, "invalid_mkv")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_input_fails_only_with_mkv_error(data):
    body = bytearray(rich_body()[0])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            body[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=12))
        else:
            del body[at:at + data.draw(st.integers(1, 40))]
    cuts = data.draw(st.lists(st.integers(1, len(body)), max_size=10))
    try:
        events = feed_all(bytes(body), cuts)
    except MkvError as e:
        assert e.reason in {"invalid_mkv", "too_large", "truncated", "unsupported",
                            "unknown_track"}
        return
    assert all(isinstance(ev, (StreamHeader, Cluster, Tags)) for ev in events)


def test_deeply_nested_simple_tags_are_rejected():
    tag = str_element(ebml.TAG_NAME, "x")
    for _ in range(1000):
        tag = element(ebml.SIMPLE_TAG, tag)
    expect_error(HEADER_BYTES + element(ebml.TAGS, element(ebml.TAG, tag)), "invalid_mkv")


# ----------------------------------------------------------------------------- writer

def test_write_cluster_offsets_and_int16_range():
    c = fragment(T0, n=4, size=200)
    data, offsets = write_cluster(c)
    assert payloads_at(data, offsets, c) == [f.payload for f in c.frames]
    data, offsets = write_cluster(c, tags=[("k", "v")], unknown_size=True)
    assert payloads_at(data, offsets, c) == [f.payload for f in c.frames]
    assert feed_all(HEADER_BYTES + data) == [HEADER, c, Tags([("k", "v")])]
    write_cluster(Cluster(T0, [Frame(1, T0 + 32767, True, b"x"), Frame(1, T0 - 32768, True, b"")]))
    for bad in (T0 + 32768, T0 - 32769):
        with pytest.raises(MkvError) as info:
            write_cluster(Cluster(T0, [Frame(1, bad, True, b"x")]))
        assert info.value.reason == "timecode_range"


def _demux(data: bytes):
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        packets = [(p.pts, p.is_keyframe, bytes(p)) for p in container.demux(stream) if p.size]
        codec = stream.codec_context.name
    return codec, extradata, packets


@pytest.mark.parametrize("layout", ["cluster+tags", "tags+cluster", "unknown-size+eof"])
@pytest.mark.parametrize("which", ["h264_video", "h265_video"])
def test_ffmpeg_demuxes_writer_output(request, which, layout):
    video = request.getfixturevalue(which)
    parts = [write_header(stream_header(video))]
    for n, c in enumerate(clusters(video, T0)):
        meta = [("AWS_KINESISVIDEO_FRAGMENT_NUMBER", str(9134 + n)),
                ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", f"{(T0 + 40 * n) / 1000:.3f}"),
                ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", f"{c.timecode / 1000:.3f}")]
        if layout == "cluster+tags":
            parts.append(write_cluster(c, tags=meta)[0])
        elif layout == "tags+cluster":
            parts += [write_tags(meta), write_cluster(c)[0]]
        else:
            parts.append(write_cluster(c, unknown_size=True)[0])
    if layout == "unknown-size+eof":
        parts.append(write_tags(EOF_TAGS))
    codec, extradata, packets = _demux(b"".join(parts))
    assert codec == {"h264": "h264", "h265": "hevc"}[video.codec]
    assert extradata == video.codec_private
    assert packets == [(T0 + pts, key, payload) for pts, key, payload in video.packets]
