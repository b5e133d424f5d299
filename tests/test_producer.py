"""The Python KVS producer (kvslite.client.producer) and `kvslite put`.

Unit level: Annex-B -> avcC/hvcC conversion, GOP -> cluster grouping, ack parsing, request
headers. End to end: real uploads to a `kvslite serve` (CLI and Python API), read back with
boto3 ListFragments / GetMediaForFragmentList and compared packet by packet with the source.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import av
import boto3
import pytest

from kvslite.media.mkv import Cluster, MkvReader, StreamHeader
from kvslite.media.synthetic import encode_video, to_mkv
from kvslite.client.producer import (AckError, AckParser, AnnexBConverter, FragmentBuilder, HttpError,
                              Producer, SourceError, VideoFormat, avcc_from_parameter_sets,
                              parse_timestamp, putmedia_headers, split_annexb,
                              split_length_prefixed)

START_MS = 1_700_000_000_000  # producer time of the first frame in the uploads below
PARAM_SETS = {"h264": {7, 8}, "h265": {32, 33, 34}}


def nal_type(codec: str, nal: bytes) -> int:
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F


@pytest.fixture(scope="module")
def h264():
    # 2 s, GOP 10 at 25 fps (5 GOPs of 400 ms), 2 B-frames: decode order != presentation order.
    return encode_video("h264", width=160, height=120, fps=25, seconds=2.0, gop=10, bframes=2)


@pytest.fixture(scope="module")
def h265():
    return encode_video("h265", width=160, height=120, fps=25, seconds=0.8, gop=10, bframes=2)


def parameter_sets(video) -> list[bytes]:
    """The VPS/SPS/PPS NAL units inside the avcC/hvcC record."""
    cp = video.codec_private
    if video.codec == "h264":
        out, pos = [], 6
        for count_pos in (5, None):
            count = (cp[5] & 0x1F) if count_pos else cp[pos - 1]
            for _ in range(count):
                n = int.from_bytes(cp[pos:pos + 2], "big")
                out.append(cp[pos + 2:pos + 2 + n])
                pos += 2 + n
            pos += 1
        return out
    out, pos = [], 23
    for _ in range(cp[22]):
        count = int.from_bytes(cp[pos + 1:pos + 3], "big")
        pos += 3
        for _ in range(count):
            n = int.from_bytes(cp[pos:pos + 2], "big")
            out.append(cp[pos + 2:pos + 2 + n])
            pos += 2 + n
    return out


def as_annexb(video) -> list[tuple[int, bool, bytes]]:
    """The packets as an MPEG-TS camera sends them: start codes, parameter sets in-band."""
    params = parameter_sets(video)
    out = []
    for i, (pts, key, payload) in enumerate(video.packets):
        nals = (params if key else []) + split_length_prefixed(payload)
        codes = [b"\0\0\0\1" if (j == 0 or i % 2) else b"\0\0\1" for j in range(len(nals))]
        out.append((pts, key, b"".join(c + n for c, n in zip(codes, nals))))
    return out


def read_mkv(data: bytes) -> tuple[list[StreamHeader], list[Cluster]]:
    reader = MkvReader()
    events = reader.feed(data) + reader.close()
    return ([e for e in events if isinstance(e, StreamHeader)],
            [e for e in events if isinstance(e, Cluster)])


# ----------------------------------------------------------------------------- unit level

@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_annexb_converter_rebuilds_codec_private_and_payloads(codec, h264, h265):
    video = {"h264": h264, "h265": h265}[codec]
    conv = AnnexBConverter(codec)
    converted = [conv.convert(p) for _, _, p in as_annexb(video)]
    # The record built from the in-band parameter sets is FFmpeg's, byte for byte.
    assert conv.codec_private() == video.codec_private
    params = parameter_sets(video)
    for (_, key, original), got in zip(video.packets, converted):
        assert split_length_prefixed(got) == (params if key else []) + \
            split_length_prefixed(original)


def test_split_annexb_and_errors():
    assert split_annexb(b"\0\0\0\1\x67ab\0\0\1\x68c\0\0\0\0\1\x65d") == [b"\x67ab", b"\x68c", b"\x65d"]
    with pytest.raises(SourceError):
        split_annexb(b"\x01\x02\x03")
    with pytest.raises(SourceError, match="SPS/PPS"):
        avcc_from_parameter_sets([], [b"\x68"])
    with pytest.raises(SourceError, match="H.264 or H.265"):
        FragmentBuilder(VideoFormat("vp8"), 0)


def test_one_cluster_per_gop_with_absolute_timecodes(h264):
    builder = FragmentBuilder(VideoFormat("h264", h264.codec_private, 160, 120, 25), START_MS)
    chunks = [c for p in h264.packets for c in builder.add(*p)] + builder.finish()
    assert chunks[0].timecode is None  # the header comes first
    assert [c.timecode for c in chunks[1:]] == [START_MS + 400 * k for k in range(5)]
    assert [c.frames for c in chunks[1:]] == [10] * 5
    headers, clusters = read_mkv(b"".join(c.data for c in chunks))
    (header,) = headers
    assert header.timecode_scale_ns == 1_000_000
    (track,) = header.tracks
    assert (track.codec_id, track.codec_private, track.width, track.height) == \
        ("V_MPEG4/ISO/AVC", h264.codec_private, 160, 120)
    assert track.default_duration_ns == 40_000_000
    frames = [f for c in clusters for f in c.frames]
    assert [(f.timecode, f.keyframe, f.payload) for f in frames] == \
        [(START_MS + pts, key, payload) for pts, key, payload in h264.packets]
    assert all(c.frames[0].keyframe for c in clusters)


def test_leading_non_keyframes_dropped_and_annexb_header(h264):
    packets = as_annexb(h264)
    builder = FragmentBuilder(VideoFormat("h264"), START_MS)  # no codec private: Annex-B
    chunks = [c for p in packets[3:] for c in builder.add(*p)] + builder.finish()
    assert builder.dropped == 7  # up to the second keyframe
    headers, clusters = read_mkv(b"".join(c.data for c in chunks))
    assert headers[0].tracks[0].codec_private == h264.codec_private
    assert clusters[0].timecode == START_MS  # timestamps count from the first keyframe
    assert len(clusters) == 4


def test_long_gop_and_backwards_time_are_refused():
    builder = FragmentBuilder(VideoFormat("h264", b"\x01" + b"\0" * 6), 0)
    builder.add(0, True, b"\0\0\0\1\x65")
    builder.add(20_000, False, b"\0\0\0\1\x41")  # 20 s: still one fragment
    with pytest.raises(SourceError, match="keyframes at most 20 s apart"):
        builder.add(20_001, False, b"\0\0\0\1\x41")  # refused at once, not buffered
    builder = FragmentBuilder(VideoFormat("h264", b"\x01" + b"\0" * 6), 10_000)
    builder.add(1000, True, b"\0\0\0\1\x65")
    builder.add(500, True, b"\0\0\0\1\x65")
    with pytest.raises(SourceError, match="backwards"):
        builder.finish()


def test_ack_parser_lines_split_and_back_to_back():
    parser = AckParser()
    data = (b'{"EventType":"BUFFERING","FragmentTimecode":1700000000000}\n'
            b'{"EventType":"PERSISTED","FragmentTimecode":1700000000000,"FragmentNumber":"91"}'
            b'{"EventType":"ERROR","ErrorId":4006,"ErrorCode":"INVALID_MKV_DATA"}\n{"EventType":"IDLE"}\n')
    acks = []
    for i in range(0, len(data), 7):  # arbitrary network chunks
        acks += parser.feed(data[i:i + 7])
    assert [a.event_type for a in acks] == ["BUFFERING", "PERSISTED", "ERROR", "IDLE"]
    assert acks[1].timecode == 1700000000000 and acks[1].fragment_number == "91"
    assert (acks[2].error_id, acks[2].error_code, acks[2].timecode) == (4006, "INVALID_MKV_DATA", None)


def test_putmedia_headers_signed_over_the_empty_payload():
    from botocore.credentials import Credentials

    headers = dict(putmedia_headers("http://127.0.0.1:4567/putMedia", stream_name="cam",
                                    producer_start_ms=1_700_000_000_005,
                                    credentials=Credentials("AKID", "secret"), region="eu-west-1"))
    assert headers["x-amzn-producer-start-timestamp"] == "1700000000.005"
    assert headers["x-amzn-fragment-timecode-type"] == "ABSOLUTE"
    assert headers["x-amzn-fragment-acknowledgment-required"] == "1"
    assert headers["transfer-encoding"] == "chunked" and headers["host"] == "127.0.0.1:4567"
    auth = headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKID/")
    assert "/eu-west-1/kinesisvideo/aws4_request" in auth
    assert "x-amzn-stream-name" in auth and "x-amzn-producer-start-timestamp" in auth
    unsigned = dict(putmedia_headers("https://h/putMedia", stream_arn="arn:aws:kinesisvideo:x",
                                     producer_start_ms=0))
    assert "authorization" not in unsigned and unsigned["x-amzn-stream-arn"].startswith("arn:")


def test_parse_timestamp():
    assert parse_timestamp("1700000000.5") == 1_700_000_000_500
    assert parse_timestamp("2023-11-14T22:13:20Z") == START_MS
    assert parse_timestamp("2023-11-14T22:13:20") == START_MS  # UTC without a zone
    assert parse_timestamp("2023-11-15T00:13:20.250+02:00") == START_MS + 250
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def sources(h264, tmp_path_factory):
    """The synthetic video remuxed (no re-encode) into .mp4 and .ts files."""
    folder = tmp_path_factory.mktemp("sources")
    mkv = folder / "src.mkv"
    mkv.write_bytes(to_mkv(h264, 0))
    out = {}
    for fmt, name in (("mp4", "src.mp4"), ("mpegts", "src.ts")):
        with av.open(str(mkv)) as inp, av.open(str(folder / name), "w", format=fmt) as dst:
            stream = dst.add_stream_from_template(inp.streams.video[0])
            for packet in inp.demux(inp.streams.video[0]):
                if packet.size:
                    packet.stream = stream
                    dst.mux(packet)
        out[fmt] = folder / name
    return out


def put_cli(server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_DEFAULT_REGION": "us-east-1", "KVSLITE_ENDPOINT_URL": server.endpoint}
    return subprocess.run([sys.executable, "-m", "kvslite", "put", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def archived(server, stream: str):
    kvs = server.client("kinesisvideo")
    endpoint = kvs.get_data_endpoint(StreamName=stream, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    return boto3.client("kinesis-video-archived-media", endpoint_url=endpoint,
                        region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="secret")


def stored_packets(server, stream: str):
    """(fragments sorted by producer time, demuxed packets of GetMediaForFragmentList)."""
    client = archived(server, stream)
    fragments = client.list_fragments(StreamName=stream)["Fragments"]
    fragments.sort(key=lambda f: f["ProducerTimestamp"])
    media = client.get_media_for_fragment_list(
        StreamName=stream, Fragments=[f["FragmentNumber"] for f in fragments])
    with av.open(io.BytesIO(media["Payload"].read())) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        packets = [(p.pts, p.is_keyframe, bytes(p)) for p in container.demux(video) if p.size]
    return fragments, packets


def producer_ms(fragment) -> int:
    return round(fragment["ProducerTimestamp"].timestamp() * 1000)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mp4", "mpegts"])
def test_put_file_end_to_end(fmt, shared_server, sources, h264):
    stream = f"put-{fmt}"
    result = put_cli(shared_server, stream, str(sources[fmt]), "--create",
                     "--start-timestamp", "2023-11-14T22:13:20Z")
    assert result.returncode == 0, result.stderr
    assert f"put {stream}: 5 fragments persisted, 50 frames" in result.stdout
    assert result.stderr.count(" persisted: ") == 5  # one progress line per fragment
    info = shared_server.client("kinesisvideo").describe_stream(StreamName=stream)["StreamInfo"]
    assert info["DataRetentionInHours"] == 24

    fragments, packets = stored_packets(shared_server, stream)
    assert [producer_ms(f) for f in fragments] == [START_MS + 400 * k for k in range(5)]
    assert [f["FragmentLengthInMilliseconds"] for f in fragments] == [400] * 5
    assert [(pts, key) for pts, key, _ in packets] == \
        [(START_MS + pts, key) for pts, key, _ in h264.packets]
    if fmt == "mp4":
        assert [p for _, _, p in packets] == [p for _, _, p in h264.packets]
    else:  # TS: Annex-B converted back; the muxer added AUDs and in-band SPS/PPS
        def vcl(payload):
            return [n for n in split_length_prefixed(payload) if nal_type("h264", n) not in (7, 8, 9)]
        assert [vcl(p) for _, _, p in packets] == [vcl(p) for _, _, p in h264.packets]


def test_put_missing_stream_without_create(shared_server, sources):
    result = put_cli(shared_server, "put-missing", str(sources["mp4"]))
    assert result.returncode == 1
    assert "ResourceNotFoundException" in result.stderr
    assert "put-missing" in result.stderr


def test_put_error_ack_exits_1(shared_server, sources):
    future = str(int(time.time()) + 3600)  # the server refuses producer times in the future
    result = put_cli(shared_server, "put-future", str(sources["mp4"]), "--create", "-q",
                     "--start-timestamp", future)
    assert result.returncode == 1
    assert "ErrorId 4007 (INVALID_PRODUCER_TIMESTAMP)" in result.stderr
    assert result.stdout == ""


def test_put_retention_zero_counts_received(shared_server, sources):
    result = put_cli(shared_server, "put-noretention", str(sources["mp4"]), "--create",
                     "--retention-hours", "0", "-q")
    assert result.returncode == 0, result.stderr
    assert "5 fragments received (the stream keeps no data)" in result.stdout


@pytest.mark.slow
def test_python_api_h264_annexb_realtime_full_duplex(shared_server, h264):
    kvs = shared_server.client("kinesisvideo")
    kvs.create_stream(StreamName="api-h264", DataRetentionInHours=1)
    packets = as_annexb(h264)[:30]  # 3 GOPs, 1.2 s, Annex-B as a camera's encoder gives it
    sent_when_acked = []
    producer = Producer("api-h264", endpoint_url=shared_server.endpoint, region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"))
    t0 = time.monotonic()
    summary = producer.put(packets, VideoFormat("h264", width=160, height=120),
                           start_timestamp=datetime.fromtimestamp(START_MS / 1000, timezone.utc),
                           realtime=True,
                           on_ack=lambda ack, s: sent_when_acked.append((ack.event_type,
                                                                         s.fragments_sent)))
    assert time.monotonic() - t0 >= 1.0  # paced: the last GOP ends at 1.16 s
    assert (summary.fragments_sent, summary.fragments_persisted, summary.frames_sent) == (3, 3, 30)
    assert summary.fragment_timecodes == [START_MS, START_MS + 400, START_MS + 800]
    assert len(set(summary.fragment_numbers)) == 3 and len(summary.ack_latency_ms) == 3
    # Full duplex: the first fragment was persisted while later ones were still unsent.
    assert ("PERSISTED", 1) in sent_when_acked
    fragments, packets_back = stored_packets(shared_server, "api-h264")
    assert sorted(f["FragmentNumber"] for f in fragments) == sorted(summary.fragment_numbers)
    assert [p for _, _, p in packets_back] == \
        [(AnnexBConverter("h264").convert(p)) for _, _, p in packets]


def test_python_api_h265_packets(shared_server, h265):
    producer = Producer("api-h265", endpoint_url=shared_server.endpoint, region="us-east-1")
    producer.ensure_stream(create=True, retention_hours=2, media_type="video/h265")
    summary = producer.put(h265.packets, VideoFormat("hevc", h265.codec_private, 160, 120, 25),
                           start_timestamp=START_MS)
    assert summary.fragments_persisted == 2 and summary.fragment_timecodes == [START_MS, START_MS + 400]
    with pytest.raises(AckError) as err:  # producer time an hour ahead: an ERROR ack
        producer.put(h265.packets, VideoFormat("hevc", h265.codec_private),
                     start_timestamp=(time.time() + 3600) * 1000)
    assert (err.value.error_id, err.value.error_code) == (4007, "INVALID_PRODUCER_TIMESTAMP")
    assert err.value.summary.fragments_sent >= 1 and err.value.summary.fragments_persisted == 0


def test_putmedia_http_error_is_raised(shared_server, h265):
    # Straight to PutMedia (no control-plane calls): the server's 404 comes back as HttpError.
    producer = Producer("api-nosuch", endpoint_url=shared_server.endpoint,
                        data_endpoint=shared_server.endpoint)
    with pytest.raises(HttpError) as err:
        producer.put(h265.packets, VideoFormat("hevc", h265.codec_private), start_timestamp=START_MS)
    assert (err.value.status, err.value.code, err.value.operation) == \
        (404, "ResourceNotFoundException", "PutMedia")


@pytest.mark.slow
def test_signed_put_against_a_server_with_credentials(start_server, sources, h265):
    server = start_server("--access-key-id", "AKIDEXAMPLE", "--secret-access-key", "secret")
    result = put_cli(server, "signed", str(sources["mp4"]), "--create", "-q",
                     "--start-timestamp", "1700000000")
    assert result.returncode == 0, result.stderr
    assert "5 fragments persisted" in result.stdout
    producer = Producer("signed", endpoint_url=server.endpoint, credentials=("AKIDEXAMPLE", "bad"),
                        data_endpoint=server.endpoint)
    with pytest.raises(HttpError) as err:
        producer.put(h265.packets, VideoFormat("hevc", h265.codec_private))
    assert err.value.code == "InvalidSignatureException"


def test_ack_parser_survives_invalid_utf8():
    from kvslite.client.producer import AckParser

    parser = AckParser()
    assert parser.feed(b'\xff\xfe\n') == []  # a garbage line is skipped...
    assert [a.event_type for a in parser.feed(b'{"EventType":"IDLE"}\n')] == ["IDLE"]
    assert [a.fragment_number for a in parser.feed(
        b'{"EventType":"PERSISTED","FragmentNumber":"7"}\n')] == ["7"]
