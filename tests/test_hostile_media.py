"""Hostile PutMedia bodies against a real `kvslite serve`: exact ErrorIds, bounded memory,
no internal errors on malformed MKV, and a producer that trickles cannot hold a stream.

Every body is built by hand from EBML elements (kvslite.media.ebml) or from a tiny synthetic
H.264 video, and sent over a raw chunked connection, so each test controls every byte.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_media import PutMediaConnection, put_mkv, vint
from kvslite.server.archive.ingest import ERROR_NAMES
from kvslite.media import ebml, mkv, synthetic
from kvslite.media.ebml import element, encode_id, encode_size, uint_element
from kvslite.media.limits import MAX_FRAGMENT_FRAMES

NOW_MS = int(time.time() * 1000)


# -- helpers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """10 frames of 64x48 H.264 in 2 GOPs: a valid header + 2 clusters of ~1 KB each."""
    return synthetic.encode_video("h264", width=64, height=48, fps=25, seconds=0.4, gop=5)


@pytest.fixture(scope="module")
def archived(shared_server):
    return shared_server.client("kinesis-video-archived-media")


def header_of(video, **changes) -> bytes:
    """The video's stream header, with Track fields (number=...) or timecode_scale_ns changed."""
    head = synthetic.stream_header(video)
    if "timecode_scale_ns" in changes:
        head.timecode_scale_ns = changes.pop("timecode_scale_ns")
    for name, value in changes.items():
        setattr(head.tracks[0], name, value)
    return mkv.write_header(head)


def good_clusters(video, start_ms: int) -> list[bytes]:
    return [mkv.write_cluster(c)[0] for c in synthetic.clusters(video, start_ms)]


def simple_block(rel: int, key: bool, payload: bytes = b"", track: int = 1) -> bytes:
    return element(ebml.SIMPLE_BLOCK, encode_size(track) + rel.to_bytes(2, "big", signed=True)
                   + bytes([0x80 if key else 0]) + payload)


def cluster(timecode: int, blocks: list[bytes]) -> bytes:
    return element(ebml.CLUSTER, uint_element(ebml.TIMECODE, timecode) + b"".join(blocks))


def persisted(acks: list[dict]) -> list[dict]:
    return [a for a in acks if a["EventType"] == "PERSISTED"]


def assert_error(acks: list[dict], error_id: int) -> None:
    assert acks and acks[-1]["EventType"] == "ERROR", acks
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (error_id, ERROR_NAMES[error_id]), acks
    assert sum(a["EventType"] == "ERROR" for a in acks) == 1, acks


def new_stream(server, name: str) -> str:
    server.client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=24)
    return name


def peak_rss_bytes(pid: int) -> int:
    """VmHWM (the process's peak resident set) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def stream_body(conn: PutMediaConnection, chunks, *, give_up_s: float = 60.0) -> None:
    """Send chunks until they run out or the server ends its response."""
    deadline = time.monotonic() + give_up_s
    for chunk in chunks:
        if conn.closed.is_set() or time.monotonic() > deadline:
            break
        try:
            conn.send(chunk)
        except OSError:  # the server stopped reading after its ERROR ack
            break
    conn.finish()


# -- 1. memory amplification: millions of empty blocks ----------------------------------

EMPTY_BLOCK = simple_block(0, False)  # 6 bytes: a SimpleBlock with an empty payload
MANY_BLOCKS = 2_000_000
CHUNK_BLOCKS = 40_000  # 240 KB per HTTP chunk


@pytest.mark.slow
@pytest.mark.parametrize("known_size", [False, True], ids=["unknown-size", "known-size"])
def test_two_million_empty_blocks_get_4009_in_bounded_memory(start_server, tiny, known_size):
    server = start_server()
    warm = new_stream(server, "warm-up")
    assert len(persisted(put_mkv(server.port, warm, synthetic.to_mkv(tiny, NOW_MS - 90_000)))) == 2
    stream = new_stream(server, "amplify")
    baseline = peak_rss_bytes(server.proc.pid)

    start = NOW_MS - 60_000
    good = good_clusters(tiny, start)
    timecode = start + 10_000
    body_size = len(uint_element(ebml.TIMECODE, timecode)) + len(EMPTY_BLOCK) * MANY_BLOCKS
    size_vint = encode_size(body_size) if known_size else ebml.UNKNOWN_SIZE_VINT
    head = (header_of(tiny) + b"".join(good) + encode_id(ebml.CLUSTER) + size_vint
            + uint_element(ebml.TIMECODE, timecode) + simple_block(0, True))
    repeated = EMPTY_BLOCK * CHUNK_BLOCKS

    def chunks():
        yield head
        left = MANY_BLOCKS - 1
        while left:
            n = min(left, CHUNK_BLOCKS)
            yield repeated if n == CHUNK_BLOCKS else EMPTY_BLOCK * n
            left -= n

    conn = PutMediaConnection(server.port, stream)
    try:
        stream_body(conn, chunks())
        acks = conn.all_acks(timeout=20)
    finally:
        conn.close()
    assert_error(acks, 4009)
    assert acks[-1]["ErrorCode"] == "FRAGMENT_METADATA_LIMIT_REACHED"
    assert [a["FragmentTimecode"] for a in persisted(acks)] == [start, start + 200]
    growth = peak_rss_bytes(server.proc.pid) - baseline
    assert growth < 100 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"

    archived = server.client("kinesis-video-archived-media")
    fragments = archived.list_fragments(StreamName=stream)["Fragments"]
    assert sorted(f["FragmentNumber"] for f in fragments) == \
        sorted(a["FragmentNumber"] for a in persisted(acks))
    assert "Traceback" not in server.output()


def frames_cluster(timecode: int, count: int, payload: bytes) -> bytes:
    """A cluster of `count` frames 1 ms apart, the first a keyframe."""
    blocks = [simple_block(0, True, payload)] + [simple_block(i, False) for i in range(1, count)]
    return cluster(timecode, blocks)


def test_fragment_frame_limit_boundary(shared_server, archived, tiny):
    assert MAX_FRAGMENT_FRAMES == 10_000
    key = tiny.packets[0][2]
    stream = new_stream(shared_server, "frames-at-limit")
    at_limit = NOW_MS - 50_000
    acks = put_mkv(shared_server.port, stream,
                   header_of(tiny) + frames_cluster(at_limit, MAX_FRAGMENT_FRAMES, key))
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"], acks
    assert acks[-1]["FragmentTimecode"] == at_limit

    over = NOW_MS - 40_000
    acks = put_mkv(shared_server.port, stream,
                   header_of(tiny) + frames_cluster(over, MAX_FRAGMENT_FRAMES + 1, key))
    assert_error(acks, 4009)
    assert [f["ProducerTimestamp"].timestamp() * 1000 for f in
            archived.list_fragments(StreamName=stream)["Fragments"]] == [at_limit]


# -- 2. specific ingest errors, never INTERNAL_ERROR ------------------------------------

def upload_then(server, name: str, video, tail: bytes):
    """Header + 2 good fragments + `tail`; returns the acks."""
    stream = new_stream(server, name)
    body = header_of(video) + b"".join(good_clusters(video, NOW_MS - 45_000))
    return put_mkv(server.port, stream, body + tail)


def test_track_number_above_255_is_4006(shared_server, tiny):
    stream = new_stream(shared_server, "track-300")
    key = tiny.packets[0][2]
    body = header_of(tiny, number=300) + cluster(NOW_MS - 30_000, [simple_block(0, True, key,
                                                                                track=300)])
    acks = put_mkv(shared_server.port, stream, body)
    assert acks == [{"EventType": "ERROR", "ErrorId": 4006, "ErrorCode": "INVALID_MKV_DATA"}]


@pytest.mark.parametrize("offset", [-32768, 0])
def test_timecode_scale_of_1e12_is_4006(shared_server, tiny, offset):
    """1,000,000,000,000 ns = 1000 s per tick. With a block offset of -32768 ticks a frame
    would sit 32,768,000 s (int32 overflow in ms) before its cluster: refused with the header,
    before any fragment, as is the same scale with harmless offsets."""
    stream = new_stream(shared_server, f"scale-1e12{offset}")
    key = tiny.packets[0][2]
    body = header_of(tiny, timecode_scale_ns=10**12) + cluster(1_700_000, [
        simple_block(offset, True, key)])
    acks = put_mkv(shared_server.port, stream, body)
    assert acks == [{"EventType": "ERROR", "ErrorId": 4006, "ErrorCode": "INVALID_MKV_DATA"}]


def test_frame_30_s_before_its_cluster_is_4006(shared_server, archived, tiny):
    bad_tc = NOW_MS - 35_000
    key = tiny.packets[0][2]
    acks = upload_then(shared_server, "frame-early", tiny,
                       cluster(bad_tc, [simple_block(-30_000, True, key)]))
    assert len(persisted(acks)) == 2
    assert_error(acks, 4006)
    assert acks[-1]["FragmentTimecode"] == bad_tc
    assert len(archived.list_fragments(StreamName="frame-early")["Fragments"]) == 2


@pytest.mark.parametrize("timecode", [2**63, 2**64 - 1], ids=["2^63", "2^64-1"])
def test_cluster_timecode_beyond_any_clock_is_4007(shared_server, tiny, timecode):
    """The largest timecodes an 8-byte Timecode holds: a producer time far in the future."""
    key = tiny.packets[0][2]
    acks = upload_then(shared_server, f"tc-huge-{timecode:x}", tiny,
                       cluster(timecode, [simple_block(0, True, key)]))
    assert len(persisted(acks)) == 2
    assert_error(acks, 4007)


def test_relative_start_timestamp_far_future_is_4007(shared_server, tiny):
    stream = new_stream(shared_server, "rel-future")
    acks = put_mkv(shared_server.port, stream, synthetic.to_mkv(tiny, 0),
                   timecode_type="RELATIVE", start_timestamp="99999999999.999")
    assert_error(acks, 4007)


@pytest.mark.parametrize("start", ["-1.000", "-1700000000", "1e9", "nan"])
def test_producer_time_before_1970_cannot_be_sent(shared_server, start):
    """A cluster timecode is unsigned and the start timestamp must be plain digits, so a
    producer time before 1970 can only be asked for with a negative start timestamp: that,
    like any start timestamp that is not plain epoch seconds, is refused with a 400 before
    any byte of MKV is read. (ingest.py's `start_ms < 0` -> 4007 check cannot be reached.)"""
    stream = new_stream(shared_server, f"rel-bad-start{start}")
    conn = PutMediaConnection(shared_server.port, stream,
                              timecode_type="RELATIVE", start_timestamp=start)
    conn.finish()
    assert conn.closed.wait(10)
    assert (conn.status, conn.headers["x-amzn-errortype"]) == (400, "InvalidArgumentException")
    conn.close()


# -- 3. malformed MKV fuzz: 4xx or ERROR acks, never 5000, never a hang ------------------

MASTERS = {ebml.EBML, ebml.SEGMENT, ebml.INFO, ebml.TRACKS, ebml.TRACK_ENTRY, ebml.VIDEO,
           ebml.AUDIO, ebml.CLUSTER, ebml.BLOCK_GROUP, ebml.TAGS, ebml.TAG, ebml.SIMPLE_TAG}
UINT_IDS = [ebml.TIMECODE_SCALE, ebml.TIMECODE, ebml.TRACK_NUMBER, ebml.TRACK_TYPE,
            ebml.TRACK_UID, ebml.DEFAULT_DURATION, ebml.PIXEL_WIDTH, ebml.PIXEL_HEIGHT]
KNOWN_IDS = [ebml.EBML, ebml.SEGMENT, ebml.INFO, ebml.TRACKS, ebml.TRACK_ENTRY, ebml.CLUSTER,
             ebml.TIMECODE, ebml.SIMPLE_BLOCK, ebml.BLOCK_GROUP, ebml.BLOCK, ebml.TAGS,
             ebml.VOID, ebml.CRC32, ebml.CUES, ebml.SEEK_HEAD, ebml.CODEC_PRIVATE,
             ebml.CONTENT_ENCODINGS, ebml.REFERENCE_BLOCK, *UINT_IDS]
# Fixed instants keep the fuzz's bodies, and so its outcomes, the same on every run.
FUZZ_T0 = 1_700_000_000_000  # 2023: an old recording, accepted
YEAR_2100 = 4_102_444_800_000  # a producer clock far in the future: 4007
INTERESTING_UINTS = [0, 1, 2, 127, 255, 256, 300, 32767, 10**9, 10**9 + 1, 10**12, 2**31,
                     2**32, FUZZ_T0, YEAR_2100, 2**53, 2**63, 2**64 - 1]


def element_map(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(offset, id, header length, payload end, size length) of every element a tolerant walk
    of `data` finds, parents before children; stops quietly at the first unreadable bytes."""
    found: list = []

    def walk(pos: int, end: int) -> None:
        while pos < end:
            got = ebml.read_id(data, pos)
            sz = got and ebml.read_size(data, pos + got[1])
            if not sz:
                return
            eid, hlen = got[0], got[1] + sz[1]
            stop = end if sz[0] == ebml.UNKNOWN else min(end, pos + hlen + sz[0])
            found.append((pos, eid, hlen, stop, sz[1]))
            if eid in MASTERS:
                walk(pos + hlen, stop)
            pos = stop

    try:
        walk(0, len(data))
    except ebml.MkvError:
        pass
    return found


@st.composite
def random_id(draw) -> bytes:
    if draw(st.booleans()):
        return encode_id(draw(st.sampled_from(KNOWN_IDS)))
    n = draw(st.integers(1, 4))
    return vint(draw(st.integers(1, (1 << 7 * n) - 2)), n)


@st.composite
def garbage_tracks(draw) -> bytes:
    entries = []
    for _ in range(draw(st.integers(0, 5))):
        fields = []
        if draw(st.integers(0, 4)):
            fields.append(uint_element(ebml.TRACK_NUMBER, draw(st.sampled_from(
                [1, 2, 3, 4, *INTERESTING_UINTS]))))
        if draw(st.booleans()):
            fields.append(uint_element(ebml.TRACK_TYPE, draw(st.sampled_from([0, 1, 2, 17, 255]))))
        if draw(st.booleans()):
            fields.append(ebml.str_element(ebml.CODEC_ID, draw(st.sampled_from(
                ["V_MPEG4/ISO/AVC", "V_MPEGH/ISO/HEVC", "A_AAC", "", "V_\u00e9\x00"]))))
        if draw(st.booleans()):
            fields.append(element(ebml.CODEC_PRIVATE, draw(st.binary(max_size=40))))
        if draw(st.booleans()):
            fields.append(uint_element(ebml.DEFAULT_DURATION,
                                       draw(st.sampled_from(INTERESTING_UINTS))))
        if draw(st.booleans()):
            fields.append(element(ebml.VIDEO, uint_element(ebml.PIXEL_WIDTH, draw(
                st.sampled_from(INTERESTING_UINTS))) + element(ebml.PIXEL_HEIGHT, draw(
                    st.binary(max_size=10)))))
        if draw(st.booleans()):
            fields.append(element(ebml.AUDIO, element(ebml.SAMPLING_FREQUENCY, draw(
                st.binary(max_size=9))) + element(ebml.CHANNELS, draw(st.binary(max_size=3)))))
        if draw(st.booleans()):
            fields.append(element(ebml.CONTENT_ENCODINGS, element(
                ebml.CONTENT_ENCODING, draw(st.binary(max_size=12)))))
        entries.append(element(ebml.TRACK_ENTRY, b"".join(draw(st.permutations(fields)))))
    return element(ebml.TRACKS, b"".join(entries))


@st.composite
def odd_cluster(draw) -> bytes:
    """A well-formed Cluster whose timecode, tracks, offsets and flags may break KVS's rules."""
    timecode = draw(st.sampled_from([FUZZ_T0 + 60_000, FUZZ_T0 - 200_000, YEAR_2100, 0,
                                     2**63, 2**64 - 1]))
    blocks = []
    for i in range(draw(st.integers(0, 6))):
        track = draw(st.sampled_from([1, 1, 1, 2, 3, 127, 300]))
        rel = draw(st.sampled_from([0, 40 * i, -40, -21_000, -32768, 20_001, 32767]))
        flags = draw(st.sampled_from([0x80, 0x80, 0x00, 0x02, 0x06, 0x88]))
        payload = draw(st.sampled_from([b"", b"\0\0\0\x01\x65", b"x" * 40]))
        blocks.append(element(ebml.SIMPLE_BLOCK, encode_size(track)
                              + rel.to_bytes(2, "big", signed=True) + bytes([flags]) + payload))
    size = draw(st.sampled_from(["known", "known", "unknown"]))
    body = (uint_element(ebml.TIMECODE, timecode) if draw(st.integers(0, 9)) else b"") + \
        b"".join(blocks)
    if size == "unknown":
        return encode_id(ebml.CLUSTER) + ebml.UNKNOWN_SIZE_VINT + body
    return element(ebml.CLUSTER, body)


def mutate_structure(data: bytes, draw) -> bytes:
    """One element-aware mutation of `data`."""
    found = element_map(data)
    if not found:
        return data
    pos, eid, hlen, end, szlen = draw(st.sampled_from(found))
    idlen = hlen - szlen
    kind = draw(st.sampled_from(["size", "wide-size", "duplicate", "drop", "move", "new-element",
                                 "retag", "tracks", "uint", "block", "cluster", "cluster",
                                 "cluster", "uint"]))
    if kind == "size":  # same width: unknown, the largest, zero, or off by a little
        size = end - pos - hlen
        value = draw(st.sampled_from([(1 << 7 * szlen) - 1, (1 << 7 * szlen) - 2, 0,
                                      max(0, size - 1), size + 1, size + 7]))
        value = max(0, min(value, (1 << 7 * szlen) - 1))  # an element overrunning its parent
        return data[:pos + idlen] + vint(value, szlen) + data[pos + hlen:]
    if kind == "wide-size":  # 8 bytes: huge sizes that fit no buffer
        value = draw(st.sampled_from([2**56 - 1, 2**56 - 2, 2**40, 50 * 2**20 + 1,
                                      16 * 2**20 + 65, 2**20 + 1, end - pos - hlen + 1]))
        return data[:pos + idlen] + vint(value, 8) + data[pos + hlen:]
    if kind == "duplicate":
        at = draw(st.sampled_from([end] + [p for p, *_ in found]))
        return data[:at] + data[pos:end] + data[at:]
    if kind == "drop":
        return data[:pos] + data[end:]
    if kind == "move":
        piece, rest = data[pos:end], data[:pos] + data[end:]
        at = draw(st.integers(0, len(rest)))
        return rest[:at] + piece + rest[at:]
    if kind == "new-element":
        new = draw(random_id()) + encode_size(n := draw(st.integers(0, 24))) + draw(
            st.binary(min_size=n, max_size=n))
        at = draw(st.sampled_from([pos, end]))
        return data[:at] + new + data[at:]
    if kind == "retag":  # the same payload under another ID
        return data[:pos] + draw(random_id()) + data[pos + idlen:]
    if kind == "tracks":
        tracks = [(p, e) for p, i, _, e, _ in found if i == ebml.TRACKS]
        if tracks:
            pos, end = tracks[0]
        return data[:pos] + draw(garbage_tracks()) + data[end:]
    if kind == "cluster":  # replace a cluster with a well-formed one that may break the rules
        clusters = [(p, e) for p, i, _, e, _ in found if i == ebml.CLUSTER]
        if clusters:
            pos, end = draw(st.sampled_from(clusters))
        return data[:pos] + draw(odd_cluster()) + data[end:]
    if kind == "uint":
        uints = [(p, i, e) for p, i, _, e, _ in found if i in UINT_IDS]
        if not uints:
            return data
        pos, eid, end = draw(st.sampled_from(uints))
        if draw(st.booleans()):
            new = uint_element(eid, draw(st.sampled_from(INTERESTING_UINTS)))
        else:
            new = element(eid, draw(st.binary(max_size=12)))
        return data[:pos] + new + data[end:]
    # "block": a SimpleBlock's track, relative timecode and flags
    blocks = [(p, h, e) for p, i, h, e, _ in found if i == ebml.SIMPLE_BLOCK and e - p - h >= 4]
    if not blocks:
        return data
    pos, hlen, end = draw(st.sampled_from(blocks))
    track = draw(st.sampled_from([b"\x80", b"\x81", b"\x82", b"\xff", b"\x41\x2c", b"\x00",
                                  vint(1, 8), b"\x01"]))
    rel = draw(st.integers(-32768, 32767)).to_bytes(2, "big", signed=True)
    flags = bytes([draw(st.sampled_from([0x00, 0x80, 0x82, 0x84, 0x86, 0x88, 0xFF]))])
    return data[:pos + hlen] + track + rel + flags + data[pos + hlen + 4:]


def mutate_bytes(data: bytes, draw) -> bytes:
    at = draw(st.integers(0, len(data)))
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite"]))
    if kind == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 64)):]
    if kind == "truncate":
        return data[:at]
    junk = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + junk + data[at + len(junk):]


def put_raw(port: int, stream: str, body: bytes, timeout: float = 15.0):
    """One PutMedia with `connection: close`; returns (status, headers, body) once the server
    has ended the response and closed the connection. A hang raises socket.timeout."""
    head = (f"POST /putMedia HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"transfer-encoding: chunked\r\nconnection: close\r\n"
            f"x-amzn-stream-name: {stream}\r\nx-amzn-fragment-timecode-type: ABSOLUTE\r\n"
            f"x-amzn-producer-start-timestamp: 1700000000.000\r\n"
            f"x-amzn-fragment-acknowledgment-required: 1\r\n\r\n").encode()
    chunked = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head + chunked)
        except OSError:
            pass  # the server answered and closed before taking it all: read what it said
        f = sock.makefile("rb")
        status = int(f.readline().split()[1])
        headers = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            out = b""
            while size := int(f.readline().strip(), 16):
                out += f.read(size)
                assert f.readline() == b"\r\n"
            assert f.readline() == b"\r\n"
        else:
            out = f.read(int(headers.get("content-length", 0)))
        assert f.read() == b"", "the server kept the connection open after `connection: close`"
    return status, headers, out


def check_response(status: int, headers: dict, body: bytes) -> list[dict]:
    if status != 200:
        assert 400 <= status < 500, (status, body)
        assert headers.get("x-amzn-errortype"), headers
        return []
    acks = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    for i, ack in enumerate(acks):
        assert ack["EventType"] in ("RECEIVED", "PERSISTED", "IDLE", "ERROR"), ack
        if ack["EventType"] == "ERROR":
            assert i == len(acks) - 1, acks  # an ERROR ends the upload
            assert ack["ErrorId"] in ERROR_NAMES and ack["ErrorId"] != 5000, acks
            assert ack["ErrorCode"] == ERROR_NAMES[ack["ErrorId"]], acks
    return acks


FUZZ_EXAMPLES = 800


@pytest.mark.slow
def test_malformed_mkv_fuzz(shared_server, tiny):
    kvs = shared_server.client("kinesisvideo")
    base = synthetic.to_mkv(tiny, FUZZ_T0)
    stats = {"examples": 0, "errors": {}}
    counter = iter(range(10**6))

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def fuzz(data):
        body = base
        structural, byte_level = data.draw(st.sampled_from(
            [(1, 0), (1, 0), (2, 0), (2, 0), (3, 0), (0, 1), (0, 3), (1, 1), (2, 1)]),
            label="mutations")
        for _ in range(structural):
            body = mutate_structure(body, data.draw)
        for _ in range(byte_level):
            body = mutate_bytes(body, data.draw)
        stream = f"fuzz-{next(counter)}"
        kvs.create_stream(StreamName=stream, DataRetentionInHours=1)
        acks = check_response(*put_raw(shared_server.port, stream, body))
        stats["examples"] += 1
        outcome = acks[-1]["ErrorId"] if acks and acks[-1]["EventType"] == "ERROR" else "ok"
        stats["errors"][outcome] = stats["errors"].get(outcome, 0) + 1

    fuzz()
    assert stats["examples"] >= FUZZ_EXAMPLES * 0.9
    assert stats["errors"].get(4006, 0) > FUZZ_EXAMPLES // 4, stats  # the fuzz reached the parser
    assert len(stats["errors"]) >= 3, stats
    assert kvs.list_streams()["StreamInfoList"]  # still healthy, and still ingests
    after = new_stream(shared_server, "fuzz-after")
    assert len(persisted(put_mkv(shared_server.port, after,
                                 synthetic.to_mkv(tiny, NOW_MS - 20_000)))) == 2
    output = shared_server.output()
    assert "Traceback" not in output and "internal error" not in output.lower(), output[-4000:]


# -- 4. PutMedia must make progress ---------------------------------------------------

DEADLINE_S = 2.0


@pytest.fixture
def deadline_server(start_server):
    return start_server("--fragment-deadline-s", str(DEADLINE_S),
                        env={"KVSLITE_FRAGMENT_DEADLINE_S": str(DEADLINE_S)})


@pytest.mark.slow
def test_trickling_producer_gets_4000_and_frees_the_stream(deadline_server, tiny):
    server = deadline_server
    stream = new_stream(server, "trickle")
    header = header_of(tiny)
    trickled = good_clusters(tiny, NOW_MS - 30_000)[0]
    conn = PutMediaConnection(server.port, stream)
    conn.sock.settimeout(10)
    try:
        conn.send(header)
        started = time.monotonic()
        for byte in trickled[:-1]:  # never completed: one byte every 0.5 s
            if conn.closed.wait(0.5):
                break
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
            if time.monotonic() - started > DEADLINE_S + 6:
                break
        assert conn.closed.wait(2), "the server let a trickling upload run past its deadline"
        elapsed = time.monotonic() - started
        acks = conn.all_acks(timeout=1)
    finally:
        conn.close()
    assert acks == [{"EventType": "ERROR", "ErrorId": 4000, "ErrorCode": "STREAM_READ_ERROR"}]
    assert DEADLINE_S <= elapsed <= DEADLINE_S + 4, elapsed

    # The stream's one PutMedia slot is free again: a new upload is accepted right away, not
    # after the 15 s lease expiry. (The server frees the slot just after it ends the
    # response, so an immediate reconnect is refused about once in a few hundred tries:
    # retried for at most 1 s here.)
    retry_until = time.monotonic() + 1
    while True:
        again = PutMediaConnection(server.port, stream)
        try:
            again.send(synthetic.to_mkv(tiny, NOW_MS - 20_000))
            again.finish()
            acks = again.all_acks(timeout=10)
        finally:
            again.close()
        if again.status == 200 or time.monotonic() > retry_until:
            break
        time.sleep(0.05)
    assert again.status == 200, again.error_body
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 2, acks
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_short_deadline_does_not_hurt_a_normal_upload(deadline_server, tiny):
    """Fragments that complete promptly are fine however long the upload lasts, and a
    silence longer than the deadline between whole fragments is not a trickle."""
    server = deadline_server
    stream = new_stream(server, "steady")
    clusters = good_clusters(tiny, NOW_MS - 25_000) + good_clusters(tiny, NOW_MS - 24_000)
    conn = PutMediaConnection(server.port, stream)
    try:
        conn.send(header_of(tiny) + clusters[0])
        acks = conn.wait_for("PERSISTED")
        time.sleep(DEADLINE_S + 0.6)  # silent, with nothing pending
        for c in clusters[1:]:
            conn.send(c)
            time.sleep(0.4)
        conn.finish()
        acks += conn.all_acks(timeout=10)
    finally:
        conn.close()
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 4, acks
