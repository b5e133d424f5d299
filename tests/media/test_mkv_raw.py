"""kvslite.media.mkv keeps what the producer sent: header elements and blocks byte for byte."""

import io

import av
import pytest

from kvslite.media import ebml
from kvslite.media.ebml import (element, encode_id, encode_size, float_element, str_element,
                                uint_element)
from kvslite.media.mkv import (Cluster, Frame, MkvError, MkvReader, StreamHeader, Tags, Track,
                               header_bytes, write_cluster, write_header, write_tags)

T0 = 1_795_756_324_836
SEGMENT_START = encode_id(ebml.SEGMENT) + ebml.UNKNOWN_SIZE_VINT
OPUS_HEAD = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"


def feed(data: bytes, chunk: int | None = None, reader=None) -> list:
    reader = reader or MkvReader()
    step = chunk or max(1, len(data))
    events = []
    for i in range(0, len(data), step):
        events += reader.feed(data[i:i + step])
    return events + reader.close()


def wide(eid: int, payload: bytes, width: int = 8) -> bytes:
    """An element with a non-minimal size vint: re-encoding it would change its bytes."""
    return encode_id(eid) + (len(payload) | 1 << 7 * width).to_bytes(width, "big") + payload


def ebml_header(extra: bytes = b"") -> bytes:
    return element(ebml.EBML, uint_element(0x4286, 1) + uint_element(0x42F7, 1)
                   + uint_element(0x42F2, 4) + uint_element(0x42F3, 8)
                   + str_element(ebml.DOC_TYPE, "matroska") + uint_element(0x4287, 4)
                   + uint_element(0x4285, 2) + extra)


def info() -> bytes:
    return wide(ebml.INFO, wide(ebml.TIMECODE_SCALE, (1_000_000).to_bytes(8, "big"), 1)
                + element(0x73A4, bytes(range(16)))  # SegmentUID
                + element(0x4461, (123456789).to_bytes(8, "big"))  # DateUTC
                + str_element(ebml.TITLE, "hdr") + str_element(ebml.MUXING_APP, "mux")
                + str_element(ebml.WRITING_APP, "write"), 4)


def colour() -> bytes:
    mastering = element(ebml.MASTERING_METADATA, float_element(ebml.LUMINANCE_MAX, 1000.0)
                        + float_element(ebml.LUMINANCE_MIN, 0.005))
    return element(ebml.COLOUR, uint_element(ebml.MATRIX_COEFFICIENTS, 9)
                   + uint_element(ebml.TRANSFER_CHARACTERISTICS, 16)
                   + uint_element(ebml.PRIMARIES, 9) + uint_element(ebml.MAX_CLL, 1000)
                   + uint_element(ebml.MAX_FALL, 400) + mastering)


def video_entry(codec_private: bytes, width: int, height: int, extra: bytes = b"") -> bytes:
    video = element(ebml.VIDEO, uint_element(ebml.PIXEL_WIDTH, width)
                    + uint_element(ebml.PIXEL_HEIGHT, height) + colour())
    return element(ebml.TRACK_ENTRY, uint_element(ebml.TRACK_NUMBER, 1)
                   + uint_element(ebml.TRACK_UID, 0x1234) + uint_element(ebml.TRACK_TYPE, 1)
                   + str_element(ebml.CODEC_ID, "V_MPEG4/ISO/AVC")
                   + element(ebml.CODEC_PRIVATE, codec_private)
                   + str_element(ebml.LANGUAGE, "eng") + video + extra)


def opus_entry() -> bytes:
    return wide(ebml.TRACK_ENTRY, uint_element(ebml.TRACK_NUMBER, 2)
                + uint_element(ebml.TRACK_UID, 0x5678) + uint_element(ebml.TRACK_TYPE, 2)
                + str_element(ebml.CODEC_ID, "A_OPUS") + element(ebml.CODEC_PRIVATE, OPUS_HEAD)
                + str_element(ebml.LANGUAGE, "fra") + uint_element(ebml.CODEC_DELAY, 6_500_000)
                + uint_element(ebml.SEEK_PRE_ROLL, 80_000_000)
                + element(ebml.AUDIO, float_element(ebml.SAMPLING_FREQUENCY, 48000.0)
                          + uint_element(ebml.CHANNELS, 2)), 4)


def block(track: int, rel: int, flags: int, payload: bytes) -> bytes:
    return encode_size(track) + rel.to_bytes(2, "big", signed=True) + bytes([flags]) + payload


def simple_block(track: int, rel: int, key: bool, payload: bytes) -> bytes:
    return element(ebml.SIMPLE_BLOCK, block(track, rel, 0x80 if key else 0, payload))


def block_group(track: int, rel: int, payload: bytes, *before: bytes, after=()) -> bytes:
    return element(ebml.BLOCK_GROUP, b"".join(before) + element(ebml.BLOCK, block(track, rel, 0,
                                                                                  payload))
                   + b"".join(after))


# ----------------------------------------------------------------------------- header

EBML_PART = ebml_header(element(ebml.VOID, b"\0\0"))
TRACKS_PART = wide(ebml.TRACKS, video_entry(b"\x01\x64\x00\x1f", 1920, 1080) + opus_entry(), 4)


def hdr_body() -> bytes:
    """Known-size Segment with elements the header leaves out: SeekHead, Void, Tags."""
    cluster = element(ebml.CLUSTER, uint_element(ebml.TIMECODE, T0)
                      + simple_block(1, 0, True, b"IDR") + simple_block(2, 3, True, b"opus"))
    content = (element(ebml.SEEK_HEAD, b"\x4d\xbb\x80") + info() + element(ebml.VOID, b"\0" * 5)
               + TRACKS_PART + write_tags([("k", "v")]) + cluster)
    return EBML_PART + wide(ebml.SEGMENT, content)


def test_header_elements_are_kept_as_received():
    events = feed(hdr_body())
    header = events[0]
    assert header.raw == EBML_PART + SEGMENT_START + info() + TRACKS_PART
    assert header_bytes(header) == header.raw
    assert header == StreamHeader(1_000_000, [
        Track(1, 0x1234, 1, "V_MPEG4/ISO/AVC", b"\x01\x64\x00\x1f", None, 1920, 1080),
        Track(2, 0x5678, 2, "A_OPUS", OPUS_HEAD, None, None, None, 48000.0, 2)],
        "hdr", "mux", "write")
    frames = [Frame(1, T0, True, b"IDR"), Frame(2, T0 + 3, True, b"opus")]
    assert events[1:] == [Tags([("k", "v")]), Cluster(T0, frames)]


def test_header_is_the_same_for_any_chunking():
    one = feed(hdr_body())
    for chunk in (1, 2, 7, 100):
        events = feed(hdr_body(), chunk)
        assert events == one
        assert events[0].raw == one[0].raw
        assert [f.block for f in events[2].frames] == [f.block for f in one[2].frames]


def test_header_without_info_and_a_second_segment():
    tracks = element(ebml.TRACKS, video_entry(b"\x01\x42\x00\x1e", 64, 48))
    first = ebml_header() + SEGMENT_START + tracks
    second_segment = SEGMENT_START + info() + tracks  # reuses the EBML header before it
    a, b = feed(first + second_segment)
    assert a.raw == first and a.timecode_scale_ns == 1_000_000 and a.title is None
    assert b.raw == ebml_header() + second_segment and b.title == "hdr"


def test_header_bytes_writes_a_header_built_in_code():
    header = StreamHeader(1_000_000, [Track(1, 1, 1, "V_MPEG4/ISO/AVC", b"\x01")])
    assert header.raw == b"" and header_bytes(header) == write_header(header)
    assert feed(header_bytes(header))[0].raw == write_header(header)


ENCODINGS = {
    "header stripping": element(0x5034, uint_element(ebml.CONTENT_COMP_ALGO, 3)
                                + element(0x4255, b"\x00\x00\x00\x01")),
    "zlib": element(ebml.CONTENT_COMPRESSION, b""),
    "encryption": element(ebml.CONTENT_ENCRYPTION, uint_element(0x47E1, 5)),
}


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_compressed_or_encrypted_tracks_are_refused(kind):
    encoding = element(ebml.CONTENT_ENCODING, uint_element(0x5031, 0) + uint_element(0x5032, 1)
                       + ENCODINGS[kind])
    entry = video_entry(b"\x01", 64, 48, element(ebml.CONTENT_ENCODINGS, encoding))
    body = ebml_header() + SEGMENT_START + element(ebml.TRACKS, entry)
    for chunk in (None, 1):
        with pytest.raises(MkvError) as info_:
            feed(body, chunk)
        assert info_.value.reason == "invalid_mkv"
        message = info_.value.message
        assert "track 1" in message and "ContentEncodings" in message and kind in message


# ----------------------------------------------------------------------------- blocks

BLOCKS = [
    simple_block(1, 0, True, b"IDR"),
    block_group(1, 33, b"key in a group", after=[
        uint_element(ebml.BLOCK_DURATION, 33),
        element(ebml.BLOCK_ADDITIONS, element(ebml.BLOCK_MORE, uint_element(ebml.BLOCK_ADD_ID, 4)
                                              + element(ebml.BLOCK_ADDITIONAL, b"HDR10+")))]),
    block_group(1, 66, b"P", element(ebml.REFERENCE_BLOCK, b"\xdf"),
                uint_element(ebml.BLOCK_DURATION, 33)),
    simple_block(1, 99, False, b"P2"),
    block_group(2, 5, b"audio", after=[element(0x75A2, b"\x10")]),  # DiscardPadding
]
FRAMES = [Frame(1, T0, True, b"IDR"), Frame(1, T0 + 33, True, b"key in a group"),
          Frame(1, T0 + 66, False, b"P"), Frame(1, T0 + 99, False, b"P2"),
          Frame(2, T0 + 5, True, b"audio")]
HEADER = write_header(StreamHeader(1_000_000, [Track(1, 1, 1, "V_MPEG4/ISO/AVC", b"\x01"),
                                               Track(2, 2, 2, "A_AAC", b"\x12\x10")]))
CLUSTER = element(ebml.CLUSTER, uint_element(ebml.TIMECODE, T0) + b"".join(BLOCKS))


def read_cluster(data: bytes, chunk=None, reader=None) -> Cluster:
    return next(e for e in feed(HEADER + data, chunk, reader) if isinstance(e, Cluster))


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_blocks_are_kept_as_received(chunk):
    cluster = read_cluster(CLUSTER, chunk)
    assert cluster == Cluster(T0, FRAMES)  # keyframe: a BlockGroup without ReferenceBlock
    assert [f.block for f in cluster.frames] == BLOCKS
    for f in cluster.frames:
        assert f.block[f.payload_offset:f.payload_offset + f.payload_size] == f.payload
    data, offsets = write_cluster(cluster)
    assert data == CLUSTER
    assert [data[o:o + len(f.payload)] for o, f in zip(offsets, FRAMES)] == \
        [f.payload for f in FRAMES]
    again = read_cluster(write_cluster(cluster, unknown_size=True)[0])
    assert again == cluster and [f.block for f in again.frames] == BLOCKS


def test_blocks_follow_a_new_cluster_timecode():
    cluster = read_cluster(CLUSTER)
    moved = Cluster(T0 - 1000, cluster.frames + [Frame(1, T0 + 120, False, b"built in code")])
    data, offsets = write_cluster(moved)
    assert [data[o:o + len(f.payload)] for o, f in zip(offsets, moved.frames)] == \
        [f.payload for f in moved.frames]
    again = read_cluster(data)
    assert again == moved
    for before, after in zip(BLOCKS, [f.block for f in again.frames]):
        assert len(before) == len(after)  # only the block's int16 timecode changed
        assert sum(x != y for x, y in zip(before, after)) <= 2
    assert again.frames[-1].block[:1] == encode_id(ebml.SIMPLE_BLOCK)
    with pytest.raises(MkvError) as info_:
        write_cluster(Cluster(T0 - 40000, cluster.frames))
    assert info_.value.reason == "timecode_range"


def test_frame_constructor_and_equality():
    read = read_cluster(CLUSTER).frames[1]
    assert read == Frame(1, T0 + 33, True, b"key in a group")
    assert read != Frame(1, T0 + 33, True, b"key in a groupX")
    assert Frame(1, 0, True, b"x").block is None
    with pytest.raises(TypeError):
        Frame(1, 0, True, b"x", block=b"y")
    with pytest.raises(TypeError):
        Frame(1, 0, True)


def test_block_group_limits_and_errors():
    additions = element(ebml.BLOCK_ADDITIONS, element(ebml.BLOCK_ADDITIONAL, b"m" * 1000))
    ok = element(ebml.CLUSTER, uint_element(ebml.TIMECODE, T0)
                 + block_group(1, 0, b"f" * 100, after=[additions]))
    assert read_cluster(ok, reader=MkvReader(max_frame_size=100)).frames[0].payload == b"f" * 100
    big = element(ebml.CLUSTER, uint_element(ebml.TIMECODE, T0) + block_group(1, 0, b"f" * 101))
    with pytest.raises(MkvError) as info_:
        read_cluster(big, reader=MkvReader(max_frame_size=100))
    assert info_.value.reason == "too_large"
    two = element(ebml.BLOCK_GROUP, element(ebml.BLOCK, block(1, 0, 0, b"a")) * 2)
    with pytest.raises(MkvError) as info_:
        read_cluster(element(ebml.CLUSTER, uint_element(ebml.TIMECODE, T0) + two))
    assert info_.value.reason == "invalid_mkv" and "more than one Block" in info_.value.message
    stray = element(ebml.CLUSTER, uint_element(ebml.TIMECODE, T0) + block_group(9, 0, b"x"))
    with pytest.raises(MkvError) as info_:
        read_cluster(stray)
    assert info_.value.reason == "unknown_track"


# ----------------------------------------------------------------------------- FFmpeg

def producer_mkv(video) -> bytes:
    """What a producer might send: an HDR-tagged header, keyframes as SimpleBlocks, the
    other frames as BlockGroups with ReferenceBlock and BlockDuration."""
    tracks = element(ebml.TRACKS, video_entry(video.codec_private, video.width, video.height))
    out = [ebml_header(), SEGMENT_START, info(), tracks]
    cluster_tc = None
    for pts, key, payload in video.packets:
        if key:
            cluster_tc = T0 + pts
            out.append(encode_id(ebml.CLUSTER) + b"\xff" + uint_element(ebml.TIMECODE, cluster_tc))
        rel = T0 + pts - cluster_tc
        if key:
            out.append(simple_block(1, rel, True, payload))
        else:
            out.append(block_group(1, rel, payload, uint_element(ebml.BLOCK_DURATION, 40),
                                   element(ebml.REFERENCE_BLOCK, b"\xd8")))
    return b"".join(out) + write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])


def test_ffmpeg_demuxes_and_decodes_what_was_stored(h264_video):
    events = feed(producer_mkv(h264_video), 4096)
    header = events[0]
    clusters = [e for e in events if isinstance(e, Cluster)]
    stored = header_bytes(header) + b"".join(write_cluster(c)[0] for c in clusters)
    groups = [f for c in clusters for f in c.frames if f.block[:1] == encode_id(ebml.BLOCK_GROUP)]
    assert len(groups) == sum(not key for _, key, _ in h264_video.packets) > 0
    expected = [(T0 + pts, key, payload) for pts, key, payload in h264_video.packets]
    with av.open(io.BytesIO(stored), "r") as container:
        stream = container.streams.video[0]
        assert stream.metadata.get("language") == "eng"
        ctx = stream.codec_context
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace) == (9, 16, 9)  # BT.2020, PQ
        packets = [p for p in container.demux(stream) if p.size]
        assert [(p.pts, p.is_keyframe, bytes(p)) for p in packets] == expected
        decoded = {f.pts: f.to_ndarray() for p in [*packets, None] for f in ctx.decode(p)}
    # The pictures (compared as decoded YUV: the colour metadata changes a conversion to RGB).
    plain = av.CodecContext.create("h264", "r")
    plain.extradata = h264_video.codec_private
    reference = {}
    for pts, _, payload in [*expected, (None, False, None)]:
        packet = av.Packet(payload) if payload is not None else None
        if packet is not None:
            packet.pts = pts
        reference.update((f.pts, f.to_ndarray()) for f in plain.decode(packet))
    assert len(decoded) == len(expected) and decoded.keys() == reference.keys()
    assert all((decoded[pts] == reference[pts]).all() for pts in reference)
