"""PutMedia end to end: real MKV over a raw chunked connection, acks read while sending."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from botocore.exceptions import ClientError

from kvs_media import PutMediaConnection, demux_packets, put_mkv
from kvslite.media import mkv, synthetic

NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def archived(shared_server):
    return shared_server.client("kinesis-video-archived-media")


def make_stream(kvs, name, retention=24):
    kvs.create_stream(StreamName=name, DataRetentionInHours=retention)
    return name


def persisted(acks):
    return [a for a in acks if a["EventType"] == "PERSISTED"]


def test_fragments_are_persisted_acked_and_listed(shared_server, kvs, archived, h264):
    stream = make_stream(kvs, "put-basic")
    start = NOW_MS - 60_000
    acks = put_mkv(shared_server.port, stream, synthetic.to_mkv(h264, start))
    clusters = synthetic.clusters(h264, start)
    assert len(clusters) == 4
    done = persisted(acks)
    assert [a["FragmentTimecode"] for a in done] == [c.timecode for c in clusters]
    numbers = [a["FragmentNumber"] for a in done]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    assert all(len(n) == 47 for n in numbers)
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 4

    fragments = archived.list_fragments(StreamName=stream)["Fragments"]
    assert sorted(f["FragmentNumber"] for f in fragments) == numbers
    by_number = {f["FragmentNumber"]: f for f in fragments}
    for number, cluster in zip(numbers, clusters):
        fragment = by_number[number]
        assert round(fragment["ProducerTimestamp"].timestamp() * 1000) == cluster.timecode
        assert fragment["FragmentLengthInMilliseconds"] == 1000
        assert abs(fragment["ServerTimestamp"].timestamp() - time.time()) < 30


def test_acks_arrive_while_the_upload_is_still_open(shared_server, kvs, h264):
    """Full duplex: fragment 1 is PERSISTED before the last fragment is even sent."""
    stream = make_stream(kvs, "put-duplex")
    header = mkv.write_header(synthetic.stream_header(h264))
    clusters = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, NOW_MS - 30_000)]
    conn = PutMediaConnection(shared_server.port, stream)
    conn.send(header + clusters[0])
    conn.send(clusters[1][:10])  # the next cluster has begun: fragment 1 is complete
    first = conn.wait_for("PERSISTED")
    assert first[-1]["FragmentTimecode"] == NOW_MS - 30_000
    conn.send(clusters[1][10:])
    for cluster in clusters[2:]:
        conn.send(cluster)
    conn.finish()
    assert len(persisted(conn.all_acks())) == 3
    conn.close()


def test_producer_sdk_framing_acks_last_fragment_before_the_body_ends(shared_server, kvs, h264):
    """Unknown-size clusters and END_OF_FRAGMENT, with `Expect: 100-continue`, as curl sends."""
    stream = make_stream(kvs, "put-sdk")
    body = synthetic.to_mkv(h264, NOW_MS - 20_000, unknown_size_clusters=True,
                            end_of_fragment=True)
    conn = PutMediaConnection(shared_server.port, stream, expect_continue=True)
    assert conn.got_continue
    conn.send(body)
    acks = conn.wait_for("PERSISTED", count=4)  # the body is still open
    assert len(persisted(acks)) == 4
    conn.finish()
    conn.all_acks()
    conn.close()


def test_every_ack_is_its_own_http_chunk(shared_server, kvs, h264):
    """The producer SDK's ack parser reads one ack per callback and drops a second that came
    in the same read: RECEIVED and PERSISTED of a fragment must not share a chunk."""
    stream = make_stream(kvs, "put-chunks")
    conn = PutMediaConnection(shared_server.port, stream)
    conn.send(synthetic.to_mkv(h264, NOW_MS - 40_000))
    conn.finish()
    acks = conn.all_acks()
    conn.close()
    assert len(persisted(acks)) == 4
    lines = [chunk.count(b"\n") for chunk in conn.chunks]
    assert lines == [1] * len(conn.chunks) and len(conn.chunks) >= 8, conn.chunks


def test_reconnect_resending_fragments_does_not_duplicate(shared_server, kvs, archived, h264):
    stream = make_stream(kvs, "put-dupes")
    body = synthetic.to_mkv(h264, NOW_MS - 50_000)
    first = [a["FragmentNumber"] for a in persisted(put_mkv(shared_server.port, stream, body))]
    again = [a["FragmentNumber"] for a in persisted(put_mkv(shared_server.port, stream, body))]
    assert again == first
    assert len(archived.list_fragments(StreamName=stream)["Fragments"]) == 4


def test_relative_timecodes_use_the_producer_start_timestamp(shared_server, kvs, archived, h264):
    stream = make_stream(kvs, "put-relative")
    # the producer SDK writes milliseconds without zero padding: .5 means 5 ms
    acks = put_mkv(shared_server.port, stream, synthetic.to_mkv(h264, 0),
                   timecode_type="RELATIVE", start_timestamp="1700000000.5")
    assert len(persisted(acks)) == 4
    starts = sorted(round(f["ProducerTimestamp"].timestamp() * 1000)
                    for f in archived.list_fragments(StreamName=stream)["Fragments"])
    assert starts == [1_700_000_000_005 + k * 1000 for k in range(4)]


def test_old_recordings_are_accepted_future_ones_refused(shared_server, kvs, h264):
    stream = make_stream(kvs, "put-clock")
    days_ago = NOW_MS - 3 * 86_400_000
    assert len(persisted(put_mkv(shared_server.port, stream,
                                 synthetic.to_mkv(h264, days_ago)))) == 4
    acks = put_mkv(shared_server.port, stream, synthetic.to_mkv(h264, NOW_MS + 3_600_000))
    assert acks[-1]["EventType"] == "ERROR" and acks[-1]["ErrorId"] == 4007


def test_h265_round_trips_byte_for_byte(shared_server, kvs, archived):
    video = synthetic.encode_video("h265", seconds=2, gop=25, bframes=2)
    stream = make_stream(kvs, "put-h265")
    acks = put_mkv(shared_server.port, stream, synthetic.to_mkv(video, NOW_MS - 40_000))
    numbers = [a["FragmentNumber"] for a in persisted(acks)]
    assert len(numbers) == 2
    media = archived.get_media_for_fragment_list(StreamName=stream, Fragments=numbers)
    packets = demux_packets(media["Payload"].read())
    assert [(p, k, d) for p, k, d in packets] == \
        [(NOW_MS - 40_000 + p, k, d) for p, k, d in video.packets]


# -- bad input: the right ERROR ack, earlier fragments intact ------------------------------

def upload_then(shared_server, kvs, archived, name, h264, tail: bytes, *, good=2):
    """Send `good` valid fragments, then `tail`; return the acks and what was archived."""
    stream = make_stream(kvs, name)
    header = mkv.write_header(synthetic.stream_header(h264))
    clusters = synthetic.clusters(h264, NOW_MS - 45_000)
    body = header + b"".join(mkv.write_cluster(c)[0] for c in clusters[:good])
    acks = put_mkv(shared_server.port, stream, body + tail)
    listed = archived.list_fragments(StreamName=stream)["Fragments"]
    return acks, listed, clusters


def assert_error(acks, error_id, good=2):
    assert len(persisted(acks)) == good
    assert acks[-1]["EventType"] == "ERROR", acks
    assert acks[-1]["ErrorId"] == error_id
    assert isinstance(acks[-1]["ErrorCode"], str)


def test_garbage_after_good_fragments(shared_server, kvs, archived, h264):
    acks, listed, _ = upload_then(shared_server, kvs, archived, "bad-garbage", h264,
                                  b"\x00\x01garbage" * 50)
    assert_error(acks, 4006)
    assert len(listed) == 2


def test_garbage_from_the_first_byte(shared_server, kvs, archived):
    stream = make_stream(kvs, "bad-all-garbage")
    acks = put_mkv(shared_server.port, stream, b"this is not matroska at all" * 10)
    assert acks == [{"EventType": "ERROR", "ErrorId": 4006, "ErrorCode": "INVALID_MKV_DATA"}]
    assert archived.list_fragments(StreamName=stream)["Fragments"] == []


def test_truncated_cluster(shared_server, kvs, archived, h264):
    _, _, clusters = upload_then(shared_server, kvs, archived, "bad-trunc-probe", h264, b"")
    third = mkv.write_cluster(clusters[2])[0]
    acks, listed, _ = upload_then(shared_server, kvs, archived, "bad-truncated", h264,
                                  third[: len(third) // 2])
    assert_error(acks, 4006)
    assert len(listed) == 2


def test_fragment_not_starting_with_a_keyframe(shared_server, kvs, archived, h264):
    clusters = synthetic.clusters(h264, NOW_MS - 45_000)
    third = clusters[2]
    no_key = mkv.Cluster(third.frames[1].timecode, third.frames[1:])
    acks, listed, _ = upload_then(shared_server, kvs, archived, "bad-nokey", h264,
                                  mkv.write_cluster(no_key)[0])
    assert_error(acks, 4006)
    assert len(listed) == 2


def test_timecode_going_backwards(shared_server, kvs, archived, h264):
    clusters = synthetic.clusters(h264, NOW_MS - 45_000)
    acks, listed, _ = upload_then(shared_server, kvs, archived, "bad-backwards", h264,
                                  mkv.write_cluster(clusters[0])[0])
    assert_error(acks, 4004)
    assert len(listed) == 2


def test_frames_for_an_unknown_track(shared_server, kvs, archived, h264):
    clusters = synthetic.clusters(h264, NOW_MS - 45_000)
    stray = mkv.Cluster(clusters[2].timecode,
                        [mkv.Frame(7, f.timecode, f.keyframe, f.payload)
                         for f in clusters[2].frames])
    acks, listed, _ = upload_then(shared_server, kvs, archived, "bad-track", h264,
                                  mkv.write_cluster(stray)[0])
    assert_error(acks, 4010)
    assert len(listed) == 2


def test_cluster_without_a_stream_header(shared_server, kvs, archived, h264):
    stream = make_stream(kvs, "bad-noheader")
    cluster = mkv.write_cluster(synthetic.clusters(h264, NOW_MS - 10_000)[0])[0]
    acks = put_mkv(shared_server.port, stream, cluster)
    assert acks[-1]["EventType"] == "ERROR" and acks[-1]["ErrorId"] == 4006
    assert archived.list_fragments(StreamName=stream)["Fragments"] == []


# -- request-level errors -------------------------------------------------------------

def test_unknown_stream_is_404(shared_server):
    conn = PutMediaConnection(shared_server.port, "no-such-stream")
    conn.send(b"x")
    conn.finish()
    assert conn.closed.wait(10)
    assert conn.status == 404
    assert conn.headers["x-amzn-errortype"] == "ResourceNotFoundException"
    conn.close()


def test_missing_timecode_type_is_invalid(shared_server, kvs):
    make_stream(kvs, "put-no-tc-type")
    conn = PutMediaConnection(shared_server.port, "put-no-tc-type", timecode_type=None)
    conn.finish()
    assert conn.closed.wait(10)
    assert (conn.status, conn.headers["x-amzn-errortype"]) == (400, "InvalidArgumentException")
    conn.close()


def test_one_upload_per_stream(shared_server, kvs, h264):
    stream = make_stream(kvs, "put-limit")
    header = mkv.write_header(synthetic.stream_header(h264))
    first = PutMediaConnection(shared_server.port, stream)
    first.send(header)
    assert first.started.wait(10)  # the 200 is out: the server holds the upload open
    second = PutMediaConnection(shared_server.port, stream)
    second.finish()
    assert second.closed.wait(10)
    assert (second.status, second.headers["x-amzn-errortype"]) == \
        (400, "ConnectionLimitExceededException")
    second.close()
    first.finish()
    first.all_acks()
    first.close()
    third = put_mkv(shared_server.port, stream, synthetic.to_mkv(h264, NOW_MS - 5_000))
    assert len(persisted(third)) == 4


def test_no_retention_acks_received_and_keeps_nothing(shared_server, kvs, archived, h264):
    stream = make_stream(kvs, "put-noretention", retention=0)
    acks = put_mkv(shared_server.port, stream, synthetic.to_mkv(h264, NOW_MS - 5_000))
    assert [a["EventType"] for a in acks] == ["RECEIVED"] * 4
    with pytest.raises(ClientError) as e:
        archived.list_fragments(StreamName=stream)
    assert e.value.response["Error"]["Code"] == "NoDataRetentionException"


# -- durability ------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_upload_keeps_every_persisted_fragment(start_server, tmp_path):
    video = synthetic.encode_video("h264", seconds=6, gop=10, bframes=2)
    server = start_server(data_dir=tmp_path / "crash")
    server.client("kinesisvideo").create_stream(StreamName="crash", DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(video))
    clusters = [mkv.write_cluster(c)[0] for c in synthetic.clusters(video, NOW_MS - 9_000)]
    conn = PutMediaConnection(server.port, "crash")
    conn.send(header)
    for cluster in clusters[:8]:
        conn.send(cluster)
    conn.send(clusters[8][: len(clusters[8]) // 2])  # a half-sent fragment
    acked = [a for a in conn.wait_for("PERSISTED", count=8) if a["EventType"] == "PERSISTED"]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    conn.close()

    again = start_server(data_dir=tmp_path / "crash")
    archived = again.client("kinesis-video-archived-media")
    fragments = archived.list_fragments(StreamName="crash")["Fragments"]
    assert sorted(f["FragmentNumber"] for f in fragments) == \
        [a["FragmentNumber"] for a in acked]
    media = archived.get_media_for_fragment_list(
        StreamName="crash", Fragments=[a["FragmentNumber"] for a in acked])
    packets = demux_packets(media["Payload"].read())
    sent = [f for c in synthetic.clusters(video, NOW_MS - 9_000)[:8] for f in c.frames]
    assert [d for _, _, d in packets] == [f.payload for f in sent]


def encode_aac(seconds: float) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A sine tone as AAC: (AudioSpecificConfig, [(pts_ms, payload)])."""
    import fractions

    import av
    import numpy as np

    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "mono", "fltp"
    encoder.time_base = fractions.Fraction(1, 48_000)
    encoder.flags |= av.codec.context.Flags.global_header
    packets, samples = [], 0
    while samples < seconds * 48_000:
        tone = np.sin(np.arange(samples, samples + 1024) * 2 * np.pi * 440 / 48_000)
        frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None, :], format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = 48_000, samples
        samples += 1024
        packets += [(round(p.pts * 1000 / 48_000), bytes(p)) for p in encoder.encode(frame)]
    return bytes(encoder.extradata), packets


def test_audio_track_is_stored_and_passed_through(shared_server, kvs, archived, h264):
    import io

    import av

    stream = make_stream(kvs, "put-audio")
    config, audio = encode_aac(4.0)
    start = NOW_MS - 70_000
    header = synthetic.stream_header(h264)
    header.tracks.append(mkv.Track(number=2, uid=2, track_type=2, codec_id="A_AAC",
                                   codec_private=config, sampling_frequency=48_000.0,
                                   channels=1))
    body, sent = mkv.write_header(header), []
    for cluster in synthetic.clusters(h264, start):
        end = cluster.frames[-1].timecode + 40
        frames = [mkv.Frame(2, start + pts, True, payload) for pts, payload in audio
                  if cluster.timecode <= start + pts < end]
        sent += [f.payload for f in frames]
        cluster.frames += frames
        cluster.frames.sort(key=lambda f: f.timecode if f.track_number == 2 else -1)
        body += mkv.write_cluster(cluster)[0]
    numbers = [a["FragmentNumber"] for a in persisted(put_mkv(shared_server.port, stream, body))]
    assert len(numbers) == 4
    data = archived.get_media_for_fragment_list(StreamName=stream,
                                                Fragments=numbers)["Payload"].read()
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        got = [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]
    assert len(sent) > 150 and got == sent


# -- per-fragment limits: 20 s (4002) and 50 MB (4001) --------------------------------------

MiB = 1 << 20


def upload_with_tail(server, kvs, name, h264, tail_clusters: list[bytes], start_ms):
    """Two good fragments, then `tail_clusters`, in one upload; returns every ack."""
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    good = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, start_ms)[:2]]
    return put_mkv(server.port, name, header + b"".join(good + tail_clusters))


def assert_refused_after_two(acks, error_id: int, error_code_name: str):
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 2 + ["ERROR"], acks
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (error_id, error_code_name)


def test_fragment_spanning_more_than_20_seconds_is_error_4002(shared_server, kvs, archived,
                                                              h264):
    start = NOW_MS - 120_000
    clusters = synthetic.clusters(h264, start)
    third = clusters[2]
    # a keyframe, then a frame 20.5 s later: the fragment's frames span more than 20 s
    long = mkv.Cluster(third.timecode, [
        third.frames[0],
        mkv.Frame(1, third.timecode + 20_500, False, third.frames[1].payload)])
    acks = upload_with_tail(shared_server, kvs, "limit-4002", h264,
                            [mkv.write_cluster(long)[0]], start)
    assert_refused_after_two(acks, 4002, "MAX_FRAGMENT_DURATION_REACHED")
    assert acks[-1].get("FragmentTimecode", third.timecode) == third.timecode
    listed = archived.list_fragments(StreamName="limit-4002")["Fragments"]
    assert sorted(round(f["ProducerTimestamp"].timestamp() * 1000) for f in listed) == \
        [start, start + 1000]
    assert sorted(f["FragmentNumber"] for f in listed) == \
        [a["FragmentNumber"] for a in persisted(acks)]


def ebml_size(value: int) -> bytes:
    return bytes([0x01]) + value.to_bytes(7, "big")  # an 8-byte EBML size


def test_known_size_cluster_over_50_mb_is_error_4001_before_its_body(shared_server, kvs,
                                                                     archived, h264):
    """The Cluster header announces 51 MiB: refused at once (4001), without the body."""
    start = NOW_MS - 180_000
    kvs.create_stream(StreamName="limit-4001-known", DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    good = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, start)[:2]]
    timecode = b"\xe7" + bytes([0x88]) + (start + 2000).to_bytes(8, "big")
    big_cluster_start = b"\x1f\x43\xb6\x75" + ebml_size(51 * MiB) + timecode
    conn = PutMediaConnection(shared_server.port, "limit-4001-known")
    try:
        conn.send(header + b"".join(good) + big_cluster_start)
        # nothing more is sent: the refusal cannot wait for the 51 MiB
        acks = conn.wait_for("ERROR", timeout=15)
    finally:
        conn.finish()
        conn.close()
    assert_refused_after_two(acks, 4001, "MAX_FRAGMENT_SIZE_REACHED")
    listed = archived.list_fragments(StreamName="limit-4001-known")["Fragments"]
    assert sorted(f["FragmentNumber"] for f in listed) == \
        [a["FragmentNumber"] for a in persisted(acks)]


def test_unknown_size_cluster_growing_past_50_mb_is_error_4001(shared_server, kvs, archived,
                                                              h264):
    """The producer SDK's unknown-size clusters: refused (4001) once 50 MB is exceeded."""
    start = NOW_MS - 240_000
    kvs.create_stream(StreamName="limit-4001-unknown", DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    good = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, start)[:2]]
    key = synthetic.clusters(h264, start)[2].frames[0]
    blob = key.payload + bytes(13 * MiB - len(key.payload))  # 4 x 13 MiB = 52 MiB
    frames = [mkv.Frame(1, start + 2000 + 40 * i, i == 0, blob) for i in range(4)]
    huge = mkv.write_cluster(mkv.Cluster(start + 2000, frames), unknown_size=True)[0]
    assert len(huge) > 52 * MiB
    conn = PutMediaConnection(shared_server.port, "limit-4001-unknown")
    sender_done = threading.Event()

    def send_all():
        try:
            conn.send(header + b"".join(good))
            for at in range(0, len(huge), MiB):
                conn.send(huge[at:at + MiB])
            conn.finish()
        except OSError:
            pass  # the server may close the upload as soon as it refuses it
        finally:
            sender_done.set()

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    try:
        acks = conn.wait_for("ERROR", timeout=30)
    finally:
        conn.close()
        sender_done.wait(15)
    assert_refused_after_two(acks, 4001, "MAX_FRAGMENT_SIZE_REACHED")
    listed = archived.list_fragments(StreamName="limit-4001-unknown")["Fragments"]
    assert len(listed) == 2
