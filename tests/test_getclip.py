"""GetClip end to end: an MP4 remuxed from the archive, checked frame by frame."""

from __future__ import annotations

import io
import time

import av
import pytest
from botocore.exceptions import ClientError

from kvs_media import put_mkv
from kvslite.media import mkv, synthetic

START_MS = (int(time.time()) - 4 * 3600) * 1000
HOUR_MS = 3600_000


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def h265():
    return synthetic.encode_video("h265", seconds=2, gop=25, bframes=2)


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


@pytest.fixture(scope="module")
def streams(server, h264, h265):
    kvs = server.client("kinesisvideo")
    for name in ("clip-h264", "clip-h265", "clip-long", "clip-vp8", "clip-nocpd"):
        kvs.create_stream(StreamName=name, DataRetentionInHours=24)
    kvs.create_stream(StreamName="clip-noretention", DataRetentionInHours=0)
    put_mkv(server.port, "clip-h264", synthetic.to_mkv(h264, START_MS))
    put_mkv(server.port, "clip-h265", synthetic.to_mkv(h265, START_MS))
    short = synthetic.encode_video("h264", seconds=1, gop=25, bframes=2)
    for hours in (0, 1, 2):  # three 1-s recordings an hour apart
        put_mkv(server.port, "clip-long", synthetic.to_mkv(short, START_MS + hours * HOUR_MS))
    put_mkv(server.port, "clip-vp8", _with_track(h264, codec_id="V_VP8"))
    put_mkv(server.port, "clip-nocpd", _with_track(h264, codec_private=None))
    return short


def _with_track(video, **changes) -> bytes:
    """The video's MKV with its track description changed (codec, codec private data)."""
    header = synthetic.stream_header(video)
    for name, value in changes.items():
        setattr(header.tracks[0], name, value)
    clusters = synthetic.clusters(video, START_MS)
    return mkv.write_header(header) + b"".join(mkv.write_cluster(c)[0] for c in clusters)


def get_clip(archived, stream, start_ms, end_ms, selector="PRODUCER_TIMESTAMP"):
    response = archived.get_clip(StreamName=stream, ClipFragmentSelector={
        "FragmentSelectorType": selector,
        "TimestampRange": {"StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}})
    assert response["ContentType"] == "video/mp4"
    return response["Payload"].read()


def mp4_packets(data: bytes) -> tuple[list[tuple[int, bool, bytes]], float]:
    """(pts ms, keyframe, payload) of the video packets in decode order, and the duration."""
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name.startswith("mov")
        stream = container.streams.video[0]
        packets = [(round(p.pts * p.time_base * 1000), p.is_keyframe, bytes(p))
                   for p in container.demux(stream) if p.size]
        return packets, container.duration / 1e6


@pytest.mark.slow
def test_whole_recording_is_remuxed_byte_for_byte(archived, streams, h264):
    data = get_clip(archived, "clip-h264", START_MS, START_MS + h264.duration_ms - 1)
    packets, duration = mp4_packets(data)
    assert packets == h264.packets  # same payloads, same order, same pts, same keyframes
    assert duration == pytest.approx(h264.duration_ms / 1000)


def test_range_selects_overlapping_whole_fragments(archived, streams, h264):
    """[1.5 s, 2.5 s] meets the 2nd and 3rd one-second fragments: both, whole."""
    data = get_clip(archived, "clip-h264", START_MS + 1500, START_MS + 2500)
    packets, duration = mp4_packets(data)
    expected = [(pts - 1000, key, payload) for pts, key, payload in h264.packets[25:75]]
    assert packets == expected
    assert duration == pytest.approx(2.0)


def test_h265(archived, streams, h265):
    data = get_clip(archived, "clip-h265", START_MS, START_MS + 1999)
    packets, duration = mp4_packets(data)
    assert packets == h265.packets
    assert duration == pytest.approx(2.0)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
        assert sum(1 for _ in container.decode(video=0)) == 50


def test_server_timestamp_selector(archived, streams, h264):
    """The upload ran faster than real time, so the fragments overlap on the server
    clock; the clip plays them back to back."""
    listed = archived.list_fragments(StreamName="clip-h264")["Fragments"]
    first = min(f["ServerTimestamp"] for f in listed).timestamp()
    last = max(f["ServerTimestamp"] for f in listed).timestamp()
    data = get_clip(archived, "clip-h264", round(first * 1000), round(last * 1000) + 1,
                    "SERVER_TIMESTAMP")
    packets, duration = mp4_packets(data)
    assert packets == h264.packets
    assert duration == pytest.approx(h264.duration_ms / 1000)


def test_gaps_stay_on_the_clip_timeline(archived, streams):
    short = streams
    data = get_clip(archived, "clip-long", START_MS, START_MS + HOUR_MS + 500)
    packets, duration = mp4_packets(data)
    expected = short.packets + [(pts + HOUR_MS, k, d) for pts, k, d in short.packets]
    assert packets == expected
    assert duration == pytest.approx(HOUR_MS / 1000 + 1)


def test_more_than_90_minutes_of_media_is_refused(archived, streams):
    with pytest.raises(ClientError) as e:
        get_clip(archived, "clip-long", START_MS, START_MS + 2 * HOUR_MS + 500)
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "90 minutes" in e.value.response["Error"]["Message"]


def error(client, stream="clip-h264", start_ms=START_MS, end_ms=START_MS + 1000,
          selector="PRODUCER_TIMESTAMP", **overrides):
    params = {"StreamName": stream, "ClipFragmentSelector": {
        "FragmentSelectorType": selector,
        "TimestampRange": {"StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}}}
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(ClientError) as e:
        client.get_clip(**params)["Payload"].read()
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"][
        "HTTPStatusCode"]


def test_errors(archived, streams):
    assert error(archived, start_ms=START_MS - HOUR_MS, end_ms=START_MS - 1) == \
        ("ResourceNotFoundException", 404)  # nothing recorded then
    assert error(archived, stream="clip-nope") == ("ResourceNotFoundException", 404)
    assert error(archived, stream="clip-noretention") == ("NoDataRetentionException", 400)
    assert error(archived, stream="clip-vp8") == ("UnsupportedStreamMediaTypeException", 400)
    assert error(archived, stream="clip-nocpd") == ("MissingCodecPrivateDataException", 400)


@pytest.mark.parametrize("overrides", [
    {"start_ms": START_MS + 1000, "end_ms": START_MS},            # end before start
    {"start_ms": START_MS, "end_ms": START_MS},                   # end must be later
    {"end_ms": START_MS + 24 * HOUR_MS + 1},                      # over 24 hours
    {"selector": "SERVER_TIMESTAMP", "end_ms": int(time.time() * 1000) + HOUR_MS},  # future
    {"selector": "ARRIVAL_TIMESTAMP"},
    {"ClipFragmentSelector": None},
    {"stream": None},
])
def test_invalid_arguments(server, streams, overrides):
    client = server.client("kinesis-video-archived-media", validate=False)
    assert error(client, **overrides) == ("InvalidArgumentException", 400)


def test_byte_limit(tmp_path, h264, monkeypatch):
    """In process, with the 200 MB limit lowered to below the recording's size."""
    from kvslite.server.archive.control_plane import ControlPlane
    from kvslite.server.archive.fragments import Archive
    from kvslite.server.api_errors import ApiError
    from kvslite.server.ops import clips
    from kvslite.server.ops.requests import GetClipInput
    from kvslite.server.ops.wire import from_wire
    from kvslite.server.store.files import FileBlobStore
    from kvslite.server.store.sqlite import SqliteMetadataStore

    store = SqliteMetadataStore(tmp_path / "db")
    streams = ControlPlane(store, region="us-east-1", account_id="000000000000")
    archive = Archive(store, FileBlobStore(tmp_path / "media"))
    stream = streams.create("limited", retention_hours=1)
    header_id = archive.save_header(stream, synthetic.stream_header(h264))
    for cluster in synthetic.clusters(h264, START_MS):
        archive.persist(stream, header_id, cluster, producer_ms=cluster.timecode,
                        server_ms=cluster.timecode, duration_ms=1000, to_ms=lambda t: t)
    provider = clips.Clips(streams, archive, now_ms=lambda: int(time.time() * 1000))
    params = from_wire(GetClipInput, {"StreamName": "limited", "ClipFragmentSelector": {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": START_MS / 1000,
                           "EndTimestamp": (START_MS + 3999) / 1000}}})
    total = sum(f.size for f in archive.fragments(stream.arn, limit=10))
    monkeypatch.setattr(clips, "MAX_CLIP_BYTES", total)
    assert provider.get_clip(params).status_code == 200
    monkeypatch.setattr(clips, "MAX_CLIP_BYTES", total - 1)
    with pytest.raises(ApiError) as e:
        provider.get_clip(params)
    assert e.value.code == "InvalidArgumentException"
    store.close()


def test_aac_track_comes_along(server, archived, h264):
    from test_putmedia import encode_aac  # the AAC pass-through test's tone

    server.client("kinesisvideo").create_stream(StreamName="clip-aac", DataRetentionInHours=1)
    config, audio = encode_aac(2.0)
    header = synthetic.stream_header(h264)
    header.tracks.append(mkv.Track(number=2, uid=2, track_type=2, codec_id="A_AAC",
                                   codec_private=config, sampling_frequency=48_000.0,
                                   channels=1))
    body, sent = mkv.write_header(header), []
    for cluster in synthetic.clusters(h264, START_MS)[:2]:
        end = cluster.frames[-1].timecode + 40
        frames = [mkv.Frame(2, START_MS + pts, True, payload) for pts, payload in audio
                  if cluster.timecode <= START_MS + pts < end]
        sent += [f.payload for f in frames]
        cluster.frames += frames
        body += mkv.write_cluster(cluster)[0]
    put_mkv(server.port, "clip-aac", body)
    data = get_clip(archived, "clip-aac", START_MS, START_MS + 1999)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        got = [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]
    assert len(sent) > 80 and got == sent
