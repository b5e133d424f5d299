"""What a producer sends comes back byte for byte, through a real server.

PutMedia with a header that carries more than kvslite interprets (Language, CodecDelay,
SeekPreRoll, Colour with MasteringMetadata, non-minimal element sizes) and clusters that
mix SimpleBlocks and BlockGroups (ReferenceBlock, BlockDuration, BlockAdditions); then
GetMedia and GetMediaForFragmentList must hand back the EBML header, Info, Tracks and every
block element exactly as sent, as self-contained MKV pieces that FFmpeg plays.
"""

from __future__ import annotations

import io
import re
import time

import av
import pytest

from kvs_media import put_mkv
from kvslite.media import ebml, mkv
from kvslite.media.ebml import element, encode_id, float_element, str_element, uint_element

START_MS = int(time.time() * 1000) - 120_000  # a recent producer time, 2 minutes ago
EBML_ID = encode_id(ebml.EBML)  # b"\x1a\x45\xdf\xa3"
DISCARD_PADDING = 0x75A2


# ----------------------------------------------------------------------------- building

def wide(eid: int, payload: bytes, width: int) -> bytes:
    """An element whose size vint is `width` bytes long: a re-encoder would shorten it."""
    return encode_id(eid) + (len(payload) | 1 << 7 * width).to_bytes(width, "big") + payload


EBML_HEADER = element(ebml.EBML, uint_element(0x4286, 1) + uint_element(0x42F7, 1)
                      + uint_element(0x42F2, 4) + uint_element(0x42F3, 8)
                      + str_element(ebml.DOC_TYPE, "matroska") + uint_element(0x4287, 4)
                      + uint_element(0x4285, 2))
SEGMENT_START = encode_id(ebml.SEGMENT) + ebml.UNKNOWN_SIZE_VINT
INFO = wide(ebml.INFO, wide(ebml.TIMECODE_SCALE, (1_000_000).to_bytes(4, "big"), 2)
            + element(0x73A4, bytes(range(16, 32)))  # SegmentUID
            + str_element(ebml.TITLE, "raw round trip")
            + str_element(ebml.MUXING_APP, "hand-made muxer")
            + str_element(ebml.WRITING_APP, "test_raw_media_roundtrip"), 4)
CODEC_DELAY_NS = 2_000_000
SEEK_PRE_ROLL_NS = 80_000_000


def colour() -> bytes:
    mastering = element(ebml.MASTERING_METADATA,
                        float_element(0x55D1, 0.708) + float_element(0x55D2, 0.292)  # red x, y
                        + float_element(ebml.LUMINANCE_MAX, 1000.0)
                        + float_element(ebml.LUMINANCE_MIN, 0.005))
    return element(ebml.COLOUR, uint_element(ebml.MATRIX_COEFFICIENTS, 9)
                   + uint_element(ebml.TRANSFER_CHARACTERISTICS, 16)
                   + uint_element(ebml.PRIMARIES, 9) + uint_element(ebml.MAX_CLL, 1000)
                   + uint_element(ebml.MAX_FALL, 400) + mastering)


def tracks(video, extra: bytes = b"") -> bytes:
    entry = (uint_element(ebml.TRACK_NUMBER, 1) + uint_element(ebml.TRACK_UID, 0xC0FFEE)
             + uint_element(ebml.TRACK_TYPE, 1) + uint_element(ebml.FLAG_LACING, 0)
             + str_element(ebml.CODEC_ID, video.codec_id)
             + element(ebml.CODEC_PRIVATE, video.codec_private)
             + str_element(ebml.LANGUAGE, "ger")
             + uint_element(ebml.CODEC_DELAY, CODEC_DELAY_NS)
             + uint_element(ebml.SEEK_PRE_ROLL, SEEK_PRE_ROLL_NS)
             + element(ebml.VIDEO, uint_element(ebml.PIXEL_WIDTH, video.width)
                       + uint_element(ebml.PIXEL_HEIGHT, video.height) + colour())
             + extra)
    return wide(ebml.TRACKS, wide(ebml.TRACK_ENTRY, entry, 3), 4)


def block_body(rel: int, flags: int, payload: bytes) -> bytes:
    return b"\x81" + rel.to_bytes(2, "big", signed=True) + bytes([flags]) + payload


def frame_block(index: int, rel: int, key: bool, payload: bytes) -> bytes:
    """The block element the producer sends for the index-th frame of a GOP (decode order):
    the keyframe as a SimpleBlock, the rest as BlockGroups of a few shapes."""
    if index == 0:
        assert key
        return element(ebml.SIMPLE_BLOCK, block_body(rel, 0x80, payload))
    assert not key
    block = element(ebml.BLOCK, block_body(rel, 0, payload))
    reference = element(ebml.REFERENCE_BLOCK, (-40).to_bytes(1, "big", signed=True))
    duration = uint_element(ebml.BLOCK_DURATION, 40)
    if index == 1:  # metadata riding along with the frame
        more = element(ebml.BLOCK_MORE, uint_element(ebml.BLOCK_ADD_ID, 1)
                       + element(ebml.BLOCK_ADDITIONAL, b"side data for frame %d" % rel))
        return element(ebml.BLOCK_GROUP, block + reference + duration
                       + element(ebml.BLOCK_ADDITIONS, more))
    if index == 2:  # children in another order, and a non-minimal size
        return wide(ebml.BLOCK_GROUP, duration + reference + block, 8)
    if index == 3:
        return element(ebml.BLOCK_GROUP, reference + block + element(DISCARD_PADDING, b"\x00"))
    return element(ebml.BLOCK_GROUP, block + reference + duration)


def build_upload(video, start_ms: int):
    """(PutMedia body, header bytes as sent, [(cluster timecode, [block elements])])."""
    header = EBML_HEADER + SEGMENT_START + INFO + tracks(video)
    gops: list[tuple[int, list[bytes]]] = []
    for pts, key, payload in video.packets:
        if key:
            gops.append((start_ms + pts, []))
        timecode, blocks = gops[-1]
        blocks.append(frame_block(len(blocks), start_ms + pts - timecode, key, payload))
    body = [header]
    for timecode, blocks in gops:  # unknown-size clusters, as the producer SDK sends them
        body += [encode_id(ebml.CLUSTER), ebml.UNKNOWN_SIZE_VINT,
                 uint_element(ebml.TIMECODE, timecode), *blocks]
    body.append(mkv.write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]))
    return b"".join(body), header, gops


# ----------------------------------------------------------------------------- reading

def head(data: bytes, pos: int) -> tuple[int, int, int | None]:
    """(element id, header length, size or None when unknown) at data[pos]: a tiny EBML
    reader written apart from kvslite's."""
    id_len = 9 - data[pos].bit_length()
    assert 1 <= id_len <= 4, f"bad element ID at {pos}"
    eid = int.from_bytes(data[pos:pos + id_len], "big")
    first = data[pos + id_len]
    size_len = 9 - first.bit_length()
    assert 1 <= size_len <= 8, f"bad size at {pos + id_len}"
    raw = int.from_bytes(data[pos + id_len:pos + id_len + size_len], "big")
    value = raw & ((1 << 7 * size_len) - 1)
    size = None if value == (1 << 7 * size_len) - 1 else value
    return eid, id_len + size_len, size


def children(data: bytes) -> list[tuple[int, bytes]]:
    """(id, whole element) of each element in data, which holds known-size elements only."""
    out, pos = [], 0
    while pos < len(data):
        eid, hlen, size = head(data, pos)
        assert size is not None and pos + hlen + size <= len(data)
        out.append((eid, data[pos:pos + hlen + size]))
        pos += hlen + size
    return out


def body_of(whole: bytes) -> bytes:
    _, hlen, size = head(whole, 0)
    return whole[hlen:hlen + size]


def pieces(data: bytes) -> list[dict]:
    """Walk a response: each EBML header, then its unknown-size Segment, whose children run
    to the next EBML header or the end. Returns where each piece starts and its elements."""
    out, pos = [], 0
    while pos < len(data):
        eid, hlen, size = head(data, pos)
        assert eid == ebml.EBML and size is not None, f"expected an EBML header at {pos}"
        piece = {"start": pos, "ebml": data[pos:pos + hlen + size], "children": []}
        pos += hlen + size
        eid, hlen, size = head(data, pos)
        assert eid == ebml.SEGMENT and size is None, "expected an unknown-size Segment"
        piece["segment"] = data[pos:pos + hlen]
        pos += hlen
        while pos < len(data):
            eid, hlen, size = head(data, pos)
            if eid == ebml.EBML:
                break
            assert size is not None
            piece["children"].append((eid, data[pos:pos + hlen + size]))
            pos += hlen + size
        out.append(piece)
    return out


def split_on_ebml_headers(data: bytes) -> list[bytes]:
    """What AWS's Python consumer library does: cut the byte stream at every EBML header ID,
    without parsing anything, and treat each piece as one fragment."""
    starts = [m.start() for m in re.finditer(re.escape(EBML_ID), data)]
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)])]


def tags_of(tags_element: bytes) -> dict[str, str]:
    return dict(mkv.MkvReader().feed(EBML_HEADER + SEGMENT_START + tags_element)[0].tags)


def check_piece(piece: dict, sent_header: bytes, gop: tuple[int, list[bytes]]) -> dict:
    """The piece holds the header as sent and the GOP's blocks as sent; returns its tags."""
    ids = [eid for eid, _ in piece["children"]]
    assert ids[:4] == [ebml.INFO, ebml.TRACKS, ebml.TAGS, ebml.CLUSTER]
    info, track_list, tags, cluster = (raw for _, raw in piece["children"][:4])
    assert piece["ebml"] + piece["segment"] + info + track_list == sent_header
    assert info == INFO
    assert track_list == sent_header[-len(track_list):]
    for needle in (str_element(ebml.LANGUAGE, "ger"),
                   uint_element(ebml.CODEC_DELAY, CODEC_DELAY_NS),
                   uint_element(ebml.SEEK_PRE_ROLL, SEEK_PRE_ROLL_NS), colour()):
        assert track_list.count(needle) == 1
    timecode, blocks = gop
    (tc_id, tc), *block_elements = children(body_of(cluster))
    assert tc_id == ebml.TIMECODE and int.from_bytes(body_of(tc), "big") == timecode
    assert [raw for _, raw in block_elements] == blocks
    assert [eid for eid, _ in block_elements] == \
        [ebml.SIMPLE_BLOCK] + [ebml.BLOCK_GROUP] * (len(blocks) - 1)
    return tags_of(tags)


def decode(data: bytes) -> dict:
    """Demux and decode with FFmpeg: what the container says and every picture (as YUV)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        packets = [p for p in container.demux(stream) if p.size]
        payloads = [bytes(p) for p in packets]
        keyframes = [p.is_keyframe for p in packets]
        pictures = [f.to_ndarray() for p in [*packets, None] for f in ctx.decode(p)]
        return {"language": stream.metadata.get("language"),
                "colour": (ctx.color_primaries, ctx.color_trc, ctx.colorspace),
                "payloads": payloads, "keyframes": keyframes, "pictures": pictures}


def reference_pictures(video) -> list:
    """The pictures of the video decoded straight from its packets, in presentation order."""
    ctx = av.CodecContext.create("h264", "r")
    ctx.extradata = video.codec_private
    out = []
    for pts, _, payload in [*video.packets, (None, False, None)]:
        packet = None
        if payload is not None:
            packet = av.Packet(payload)
            packet.pts = pts
        out += [f.to_ndarray() for f in ctx.decode(packet)]
    return out


def same_pictures(a: list, b: list) -> bool:
    return len(a) == len(b) and all((x == y).all() for x, y in zip(a, b))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def upload(shared_server, kvs, h264):
    kvs.create_stream(StreamName="raw-roundtrip", DataRetentionInHours=24)
    body, header, gops = build_upload(h264, START_MS)
    assert len(gops) == 4 and [len(b) for _, b in gops] == [25] * 4
    acks = put_mkv(shared_server.port, "raw-roundtrip", body)
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 4
    persisted = [a for a in acks if a["EventType"] == "PERSISTED"]
    assert [a["FragmentTimecode"] for a in persisted] == [tc for tc, _ in gops]
    return {"numbers": [a["FragmentNumber"] for a in persisted], "header": header,
            "gops": gops, "body": body}


@pytest.fixture(scope="module")
def reference(h264):
    return reference_pictures(h264)


@pytest.fixture(scope="module")
def archived(shared_server):
    return shared_server.client("kinesis-video-archived-media")


def get_media_earliest(server, stream: str, count: int, timeout=20.0) -> bytes:
    """GetMedia from EARLIEST, read until `count` fragments arrived (it is a live stream)."""
    response = server.client("kinesis-video-media").get_media(
        StreamName=stream, StartSelector={"StartSelectorType": "EARLIEST"})
    assert response["ContentType"] == "video/webm"
    reader, data, done = mkv.MkvReader(), b"", 0
    deadline = time.monotonic() + timeout
    try:
        while done < count and time.monotonic() < deadline:
            chunk = response["Payload"]._raw_stream.read1(65536)
            if not chunk:
                break
            data += chunk
            done += sum(isinstance(e, mkv.Tags)
                        and any(n == "AWS_KINESISVIDEO_CONTINUATION_TOKEN" for n, _ in e.tags)
                        for e in reader.feed(chunk))
    finally:
        response["Payload"].close()
    assert done == count
    return data


# ----------------------------------------------------------------------------- tests

def test_the_upload_itself_is_what_it_claims(upload, h264):
    """The body sent really mixes SimpleBlocks and BlockGroups and carries the extra header
    elements, and kvslite's own reader sees it that way."""
    events = mkv.MkvReader().feed(upload["body"])
    header = events[0]
    assert header.raw == upload["header"]
    clusters = [e for e in events if isinstance(e, mkv.Cluster)]
    blocks = [f.block for c in clusters for f in c.frames]
    assert blocks == [b for _, gop in upload["gops"] for b in gop]
    assert sum(b[:1] == encode_id(ebml.SIMPLE_BLOCK) for b in blocks) == 4
    groups = [[eid for eid, _ in children(body_of(b))] for b in blocks
              if b[:1] == encode_id(ebml.BLOCK_GROUP)]
    assert len(groups) == 96
    assert all(g.count(ebml.BLOCK) == 1 and ebml.REFERENCE_BLOCK in g for g in groups)
    assert sum(ebml.BLOCK_DURATION in g for g in groups) == 92  # all but index 3
    assert sum(ebml.BLOCK_ADDITIONS in g for g in groups) == 4
    assert sum(DISCARD_PADDING in g for g in groups) == 4
    assert sum(b[1] == 0x01 for b in blocks) == 4  # 8-byte size vints
    assert [f.payload for c in clusters for f in c.frames] == [p for _, _, p in h264.packets]
    assert [f.keyframe for c in clusters for f in c.frames] == [k for _, k, _ in h264.packets]


def test_get_media_returns_header_and_blocks_as_sent(shared_server, upload):
    data = get_media_earliest(shared_server, "raw-roundtrip", 4)
    got = pieces(data)
    assert len(got) == 4
    assert [len(p) for p in split_on_ebml_headers(data)] == \
        [b - a for a, b in zip([p["start"] for p in got], [p["start"] for p in got[1:]]
                               + [len(data)])]
    for piece, number, gop in zip(got, upload["numbers"], upload["gops"]):
        assert [eid for eid, _ in piece["children"]] == \
            [ebml.INFO, ebml.TRACKS, ebml.TAGS, ebml.CLUSTER, ebml.TAGS]
        tags = check_piece(piece, upload["header"], gop)
        assert tags["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == number
        trailer = tags_of(piece["children"][4][1])
        assert trailer["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == number
    # kvslite's reader agrees: every header as sent, every block as sent
    events = mkv.MkvReader().feed(data)
    headers = [e for e in events if isinstance(e, mkv.StreamHeader)]
    assert [h.raw for h in headers] == [upload["header"]] * 4
    clusters = [e for e in events if isinstance(e, mkv.Cluster)]
    assert [[f.block for f in c.frames] for c in clusters] == [b for _, b in upload["gops"]]
    assert [c.timecode for c in clusters] == [tc for tc, _ in upload["gops"]]


def test_get_media_plays_in_ffmpeg(shared_server, upload, h264, reference):
    decoded = decode(get_media_earliest(shared_server, "raw-roundtrip", 4))
    assert decoded["language"] == "ger"
    assert decoded["colour"] == (9, 16, 9)  # BT.2020 primaries and matrix, PQ transfer
    assert decoded["payloads"] == [p for _, _, p in h264.packets]
    assert decoded["keyframes"] == [k for _, k, _ in h264.packets]
    assert len(decoded["pictures"]) == len(h264.packets) == 100
    assert same_pictures(decoded["pictures"], reference)


def test_fragment_list_returns_header_and_blocks_as_sent(archived, upload):
    numbers = upload["numbers"]
    order = [2, 0, 3]
    data = archived.get_media_for_fragment_list(
        StreamName="raw-roundtrip", Fragments=[numbers[i] for i in order])["Payload"].read()
    got = pieces(data)
    assert len(got) == 3
    for piece, i in zip(got, order):
        assert [eid for eid, _ in piece["children"]] == \
            [ebml.INFO, ebml.TRACKS, ebml.TAGS, ebml.CLUSTER]
        tags = check_piece(piece, upload["header"], upload["gops"][i])
        assert tags["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == numbers[i]
        producer_ms = upload["gops"][i][0]
        assert tags["AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"] == \
            f"{producer_ms // 1000}.{producer_ms % 1000:03d}"


def test_fragment_list_splits_on_ebml_headers_one_piece_per_fragment(
        archived, upload, h264, reference):
    """AWS's layout: the naive split a consumer does yields exactly the requested fragments,
    in request order, each one a playable MKV on its own."""
    numbers = upload["numbers"]
    order = [3, 1, 2]
    data = archived.get_media_for_fragment_list(
        StreamName="raw-roundtrip", Fragments=[numbers[i] for i in order])["Payload"].read()
    split = split_on_ebml_headers(data)
    assert len(split) == 3
    assert b"".join(split) == data
    # the naive split cuts exactly where the structure says each piece starts
    assert [p["start"] for p in pieces(data)] == [m.start() for m in
                                                 re.finditer(re.escape(EBML_ID), data)]
    for piece, i in zip(split, order):
        assert piece.startswith(upload["header"])
        tags = [e for e in mkv.MkvReader().feed(piece) if isinstance(e, mkv.Tags)]
        assert len(tags) == 1
        assert dict(tags[0].tags)["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == numbers[i]
        decoded = decode(piece)
        gop_packets = h264.packets[25 * i:25 * i + 25]
        assert decoded["language"] == "ger"
        assert decoded["payloads"] == [p for _, _, p in gop_packets]
        assert len(decoded["pictures"]) == 25
        assert same_pictures(decoded["pictures"], reference[25 * i:25 * i + 25])


def test_header_stripping_track_is_refused_and_nothing_is_archived(
        shared_server, kvs, archived, h264):
    kvs.create_stream(StreamName="raw-stripped", DataRetentionInHours=24)
    compression = element(ebml.CONTENT_COMPRESSION,
                          uint_element(ebml.CONTENT_COMP_ALGO, 3)
                          + element(0x4255, b"\x00\x00\x00\x01"))  # ContentCompSettings
    encoding = element(ebml.CONTENT_ENCODING, uint_element(0x5031, 0)  # ContentEncodingOrder
                       + uint_element(0x5032, 1) + compression)  # ContentEncodingScope
    header = (EBML_HEADER + SEGMENT_START + INFO
              + tracks(h264, element(ebml.CONTENT_ENCODINGS, encoding)))
    _, _, gops = build_upload(h264, START_MS)
    timecode, blocks = gops[0]
    cluster = element(ebml.CLUSTER, uint_element(ebml.TIMECODE, timecode) + b"".join(blocks))
    acks = put_mkv(shared_server.port, "raw-stripped", header + cluster)
    assert acks == [{"EventType": "ERROR", "ErrorId": 4006, "ErrorCode": "INVALID_MKV_DATA"}]
    assert archived.list_fragments(StreamName="raw-stripped")["Fragments"] == []
