"""Regression tests for behaviour a mutation run found unguarded.

Each test is named for what it protects and drives a real `kvslite serve` through boto3
and raw HTTP, so it survives refactors of the modules behind it (the blob-store fsync test
is the one unit test: durability cannot be seen from outside without pulling the plug).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from botocore.exceptions import ClientError

from kvs_media import PutMediaConnection, put_mkv
from kvslite.media import mkv, synthetic

NOW_MS = int(time.time() * 1000)
START_MS = (int(time.time()) - 2 * 3600) * 1000  # an old recording, on whole seconds
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(module_servers):
    # sampling intervals down to 1 ms, so GetImages can hit fragment boundaries exactly
    return module_servers("--min-sampling-interval-ms", "1")


@pytest.fixture(scope="module")
def kvs(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


def persisted(acks):
    return [a for a in acks if a["EventType"] == "PERSISTED"]


def error_code(call, **params) -> str:
    with pytest.raises(ClientError) as e:
        call(**params)
    return e.value.response["Error"]["Code"]


def until(condition, timeout: float, interval: float = 0.05):
    """Poll `condition` until it returns something truthy (returned) or `timeout` passes
    (returns its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- GetMedia: at most 3 connections per stream ----------------------------------------

class LiveFeed:
    """A PutMedia upload that keeps adding fragments until stopped, so GetMedia readers
    following the stream never reach their idle timeout during a test."""

    def __init__(self, port: int, stream: str, video, start_ms: int):
        self.conn = PutMediaConnection(port, stream)
        self.conn.send(mkv.write_header(synthetic.stream_header(video)))
        self.stop = threading.Event()
        self.video, self.start_ms = video, start_ms
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        loop = 0
        while not self.stop.is_set():
            for cluster in synthetic.clusters(self.video,
                                              self.start_ms + loop * self.video.duration_ms):
                self.conn.send(mkv.write_cluster(cluster)[0])
                if self.stop.wait(0.2):  # pacing only: the readers wait for bytes, not time
                    break
            loop += 1
        self.conn.finish()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        self.conn.all_acks()
        self.conn.close()


def test_get_media_admits_three_connections_per_stream_and_frees_a_slot_on_close(server, kvs):
    video = synthetic.encode_video("h264", seconds=2, gop=10, bframes=0)  # 400-ms fragments
    kvs.create_stream(StreamName="reg-gm-limit", DataRetentionInHours=1)
    feed = LiveFeed(server.port, "reg-gm-limit", video, NOW_MS - 600_000)
    media = server.client("kinesis-video-media")
    opened = []
    try:
        assert persisted(feed.conn.wait_for("PERSISTED")), "the live feed never persisted"

        def open_one():
            response = media.get_media(StreamName="reg-gm-limit",
                                       StartSelector={"StartSelectorType": "EARLIEST"})
            # the first bytes prove this connection is streaming (and counted) now
            assert response["Payload"]._raw_stream.read1(65536)
            opened.append(response)
            return response

        for _ in range(3):
            open_one()
        assert error_code(media.get_media, StreamName="reg-gm-limit",
                          StartSelector={"StartSelectorType": "EARLIEST"}) == \
            "ConnectionLimitExceededException"

        opened.pop(0)["Payload"].close()

        def admitted():
            try:
                return open_one()
            except ClientError as e:
                assert e.response["Error"]["Code"] == "ConnectionLimitExceededException"
                return None

        assert until(admitted, timeout=8, interval=0.1), "a closed GetMedia kept its slot"
        # the two that stayed open still count: three again, the next one is refused
        assert error_code(media.get_media, StreamName="reg-gm-limit",
                          StartSelector={"StartSelectorType": "NOW"}) == \
            "ConnectionLimitExceededException"
    finally:
        for response in opened:
            response["Payload"].close()
        feed.close()


# -- PutMedia limits: 20 s (4002) and 50 MB (4001) per fragment -----------------------

def upload_with_tail(server, kvs, name, h264, tail_clusters: list[bytes], start_ms):
    """Two good fragments, then `tail_clusters`, in one upload; returns every ack."""
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    good = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, start_ms)[:2]]
    return put_mkv(server.port, name, header + b"".join(good + tail_clusters))


def assert_refused_after_two(acks, error_id: int, error_code_name: str):
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 2 + ["ERROR"], acks
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (error_id, error_code_name)


def test_fragment_spanning_more_than_20_seconds_is_error_4002(server, kvs, archived, h264):
    start = NOW_MS - 120_000
    clusters = synthetic.clusters(h264, start)
    third = clusters[2]
    # a keyframe, then a frame 20.5 s later: the fragment's frames span more than 20 s
    long = mkv.Cluster(third.timecode, [
        third.frames[0],
        mkv.Frame(1, third.timecode + 20_500, False, third.frames[1].payload)])
    acks = upload_with_tail(server, kvs, "reg-4002", h264, [mkv.write_cluster(long)[0]], start)
    assert_refused_after_two(acks, 4002, "MAX_FRAGMENT_DURATION_REACHED")
    assert acks[-1].get("FragmentTimecode", third.timecode) == third.timecode
    listed = archived.list_fragments(StreamName="reg-4002")["Fragments"]
    assert sorted(round(f["ProducerTimestamp"].timestamp() * 1000) for f in listed) == \
        [start, start + 1000]
    assert sorted(f["FragmentNumber"] for f in listed) == \
        [a["FragmentNumber"] for a in persisted(acks)]


def ebml_size(value: int) -> bytes:
    return bytes([0x01]) + value.to_bytes(7, "big")  # an 8-byte EBML size


def test_known_size_cluster_over_50_mb_is_error_4001_before_its_body(server, kvs, archived,
                                                                     h264):
    """The Cluster header announces 51 MiB: refused at once (4001), without the body."""
    start = NOW_MS - 180_000
    kvs.create_stream(StreamName="reg-4001-known", DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    good = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, start)[:2]]
    timecode = b"\xe7" + bytes([0x88]) + (start + 2000).to_bytes(8, "big")
    big_cluster_start = b"\x1f\x43\xb6\x75" + ebml_size(51 * MiB) + timecode
    conn = PutMediaConnection(server.port, "reg-4001-known")
    try:
        conn.send(header + b"".join(good) + big_cluster_start)
        # nothing more is sent: the refusal cannot wait for the 51 MiB
        acks = conn.wait_for("ERROR", timeout=15)
    finally:
        conn.finish()
        conn.close()
    assert_refused_after_two(acks, 4001, "MAX_FRAGMENT_SIZE_REACHED")
    listed = archived.list_fragments(StreamName="reg-4001-known")["Fragments"]
    assert sorted(f["FragmentNumber"] for f in listed) == \
        [a["FragmentNumber"] for a in persisted(acks)]


def test_unknown_size_cluster_growing_past_50_mb_is_error_4001(server, kvs, archived, h264):
    """The producer SDK's unknown-size clusters: refused (4001) once 50 MB is exceeded."""
    start = NOW_MS - 240_000
    kvs.create_stream(StreamName="reg-4001-unknown", DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    good = [mkv.write_cluster(c)[0] for c in synthetic.clusters(h264, start)[:2]]
    key = synthetic.clusters(h264, start)[2].frames[0]
    blob = key.payload + bytes(13 * MiB - len(key.payload))  # 4 x 13 MiB = 52 MiB
    frames = [mkv.Frame(1, start + 2000 + 40 * i, i == 0, blob) for i in range(4)]
    huge = mkv.write_cluster(mkv.Cluster(start + 2000, frames), unknown_size=True)[0]
    assert len(huge) > 52 * MiB
    conn = PutMediaConnection(server.port, "reg-4001-unknown")
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
    listed = archived.list_fragments(StreamName="reg-4001-unknown")["Fragments"]
    assert len(listed) == 2


# -- DeleteStream removes the stream's media -------------------------------------------

def data_files(data_dir: Path) -> set[Path]:
    """Every file under the data dir except the metadata database (and its WAL/SHM)."""
    return {p for p in data_dir.rglob("*")
            if p.is_file() and not p.name.startswith("kvslite.db")}


def test_delete_stream_removes_its_media_files(start_server, h264):
    server = start_server()
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    for name in ("reg-kept", "reg-doomed"):
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    assert len(persisted(put_mkv(server.port, "reg-kept",
                                 synthetic.to_mkv(h264, START_MS)))) == 4
    before = data_files(server.data_dir)
    assert len(persisted(put_mkv(server.port, "reg-doomed",
                                 synthetic.to_mkv(h264, START_MS)))) == 4
    doomed = data_files(server.data_dir) - before
    assert doomed, "the upload wrote no media files under the data dir"
    # folders holding only the doomed stream's media must end up with no file in them
    doomed_dirs = {p.parent for p in doomed} - {p.parent for p in before}

    kvs.delete_stream(StreamARN=kvs.describe_stream(StreamName="reg-doomed")
                      ["StreamInfo"]["StreamARN"])

    def gone():  # deletion may finish in the background (the stream first DELETING)
        left = [p for p in doomed if p.exists()]
        left += [p for d in doomed_dirs if d.exists() for p in d.rglob("*") if p.is_file()]
        return not left

    assert until(gone, timeout=10, interval=0.1), \
        sorted(str(p) for p in doomed if p.exists())
    assert all(p.exists() for p in before)  # the other stream's media stays
    assert len(archived.list_fragments(StreamName="reg-kept")["Fragments"]) == 4


# -- fragment selection by overlap: [start, start + duration) is half-open -------------
#
# "overlap-gap": 4 fragments of 1 s at START_MS .. START_MS + 4000, nothing until a second
# copy at START_MS + 10 000. A fragment ending exactly where a range starts is not in it.

GAP_COPY_MS = START_MS + 10_000


@pytest.fixture(scope="module")
def overlap_stream(server, kvs, h264):
    kvs.create_stream(StreamName="overlap-gap", DataRetentionInHours=24)
    numbers = []
    for start in (START_MS, GAP_COPY_MS):
        acks = put_mkv(server.port, "overlap-gap", synthetic.to_mkv(h264, start))
        numbers += [a["FragmentNumber"] for a in persisted(acks)]
    assert len(numbers) == 8
    return numbers


def producer_range(start_ms, end_ms):
    return {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}}


def test_get_clip_leaves_out_a_fragment_that_ends_at_the_range_start(archived, overlap_stream,
                                                                     h264):
    clip = archived.get_clip(StreamName="overlap-gap",
                             ClipFragmentSelector=producer_range(START_MS + 1000,
                                                                 START_MS + 2500))
    with av.open(io.BytesIO(clip["Payload"].read())) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == 50  # fragments [1000, 2000) and [2000, 3000), not [0, 1000)
    first_shown = h264.packets[25][2]  # the keyframe at 1000 ms
    assert min(packets, key=lambda p: p.pts).is_keyframe
    assert bytes(packets[0]) == first_shown


def test_hls_on_demand_leaves_out_a_fragment_that_ends_at_the_range_start(
        archived, overlap_stream):
    import urllib.error
    import urllib.request

    url = archived.get_hls_streaming_session_url(
        StreamName="overlap-gap", PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=producer_range(START_MS + 3000, GAP_COPY_MS + 500)
    )["HLSStreamingSessionURL"]
    playlist = urllib.request.urlopen(
        url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"), timeout=10).read().decode()
    listed = [line.rsplit("=", 1)[1] for line in playlist.splitlines()
              if line.startswith("getMP4MediaFragment")]
    assert listed == [overlap_stream[3], overlap_stream[4]]
    # the session does not serve the fragment that ends at its start either
    segment = url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4")
    assert urllib.request.urlopen(f"{segment}&FragmentNumber={overlap_stream[3]}",
                                  timeout=10).status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{segment}&FragmentNumber={overlap_stream[2]}", timeout=10)
    assert (e.value.code, e.value.headers["x-amzn-ErrorType"]) == \
        (404, "ResourceNotFoundException")


def test_get_media_from_the_end_of_a_fragment_before_a_gap_starts_after_the_gap(
        server, overlap_stream):
    media = server.client("kinesis-video-media")
    response = media.get_media(StreamName="overlap-gap", StartSelector={
        "StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": (START_MS + 4000) / 1000})
    reader, tags = mkv.MkvReader(), {}
    try:
        deadline = time.monotonic() + 20
        while "AWS_KINESISVIDEO_FRAGMENT_NUMBER" not in tags and time.monotonic() < deadline:
            chunk = response["Payload"]._raw_stream.read1(65536)
            if not chunk:
                break
            for event in reader.feed(chunk):
                if isinstance(event, mkv.Tags):
                    tags.update(event.tags)
    finally:
        response["Payload"].close()
    assert tags["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == overlap_stream[4]


def test_get_images_at_the_end_of_a_fragment_before_a_gap_is_no_media(archived,
                                                                      overlap_stream, h264):
    def image_at(t_ms):
        [image] = archived.get_images(
            StreamName="overlap-gap", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=t_ms / 1000, EndTimestamp=t_ms / 1000, SamplingInterval=3000,
            Format="JPEG")["Images"]
        return image

    assert image_at(START_MS + 4000).get("Error") == "NO_MEDIA"
    assert "ImageContent" in image_at(START_MS + 3999)
    assert "ImageContent" in image_at(START_MS + 3000)  # back to back: the later fragment
    # the same instants within one page, whose lookup also finds the fragment [3000, 4000)
    images = archived.get_images(
        StreamName="overlap-gap", ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=(START_MS + 3000) / 1000, EndTimestamp=(START_MS + 4500) / 1000,
        SamplingInterval=500, Format="JPEG")["Images"]
    assert [i.get("Error") for i in images] == [None, None, "NO_MEDIA", "NO_MEDIA"]


# -- GetImages: a page stays within a 16 MiB image budget ------------------------------

def noise_video(frames: int) -> synthetic.EncodedVideo:
    """Every frame a keyframe of random noise (so one fragment per frame), 320x240 @ 25."""
    rng = np.random.default_rng(20240607)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=25, options={
            "preset": "ultrafast", "crf": "18",
            "x264-params": "keyint=1:min-keyint=1:scenecut=0:bframes=0"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            picture = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(io.BytesIO(buf.getvalue())) as inp:
        video = inp.streams.video[0]
        codec_private = bytes(video.codec_context.extradata)
        packets = [(round(p.pts * video.time_base * 1000), p.is_keyframe, bytes(p))
                   for p in inp.demux(video) if p.size]
    assert all(key for _, key, _ in packets)
    return synthetic.EncodedVideo(codec="h264", codec_id="V_MPEG4/ISO/AVC",
                                  codec_private=codec_private, width=320, height=240, fps=25,
                                  gop=1, start_index=0, packets=packets)


def test_get_images_pages_stay_within_16_mib_and_paging_delivers_every_sample_once(
        server, kvs, archived):
    # 4K PNGs of noise are ~10 MiB each. The server decodes and encodes fragments in waves
    # of twice its cores, checking the budget after each wave: ask for one wave and two
    # more, so even the first wave alone is over 16 MiB and the page must stop early.
    count = 2 * (os.cpu_count() or 2) + 2
    video = noise_video(count)
    kvs.create_stream(StreamName="reg-budget", DataRetentionInHours=1)
    acks = put_mkv(server.port, "reg-budget", synthetic.to_mkv(video, START_MS))
    assert len(persisted(acks)) == count
    params = {"StreamName": "reg-budget", "ImageSelectorType": "PRODUCER_TIMESTAMP",
              "StartTimestamp": START_MS / 1000,
              "EndTimestamp": (START_MS + 40 * (count - 1)) / 1000,
              "SamplingInterval": 40, "Format": "PNG", "WidthPixels": 3840,
              "HeightPixels": 2160, "MaxResults": count}
    pages = [archived.get_images(**params)]
    while "NextToken" in pages[-1] and len(pages) <= count:
        pages.append(archived.get_images(**params, NextToken=pages[-1]["NextToken"]))

    first = pages[0]["Images"]
    assert 0 < len(first) < count and "NextToken" in pages[0]
    images = [image for page in pages for image in page["Images"]]
    assert [round(i["TimeStamp"].timestamp() * 1000) for i in images] == \
        [START_MS + 40 * k for k in range(count)]  # every sample once, in order
    contents = [base64.b64decode(i["ImageContent"]) for i in images if "Error" not in i]
    assert len(contents) == count
    assert all(c.startswith(b"\x89PNG") for c in contents)
    assert len({hashlib.sha256(c).digest() for c in contents}) == count  # all different
    assert sum(map(len, contents)) > 16 * MiB
    from PIL import Image
    assert Image.open(io.BytesIO(contents[0])).size == (3840, 2160)


# -- the filesystem blob store fsyncs before `put` returns ------------------------------

def test_file_blob_store_fsyncs_the_blob_then_renames_then_fsyncs_the_folder(tmp_path,
                                                                           monkeypatch):
    from kvslite.store.files import FileBlobStore

    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(info.st_mode) else "file",
                       info.st_ino, info.st_size))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)

    store = FileBlobStore(tmp_path / "media")
    data = os.urandom(100_000)
    store.put("streams/s-1/1700000000000-abcd.mkv", data)
    monkeypatch.undo()

    path = tmp_path / "media" / "streams" / "s-1" / "1700000000000-abcd.mkv"
    assert path.read_bytes() == data and store.get("streams/s-1/1700000000000-abcd.mkv") == data
    blob_ino, dir_ino = path.stat().st_ino, path.parent.stat().st_ino
    file_syncs = [i for i, e in enumerate(events)
                  if e[:3] == ("fsync", "file", blob_ino) and e[3] == len(data)]
    dir_syncs = [i for i, e in enumerate(events) if e[:3] == ("fsync", "dir", dir_ino)]
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(path)]
    assert file_syncs, f"the blob's bytes were never fsynced: {events}"
    assert dir_syncs, f"the blob's folder was never fsynced: {events}"
    if renames:  # written under another name and renamed into place (atomic)
        assert file_syncs[0] < renames[-1] < dir_syncs[-1], events
    else:
        assert file_syncs[0] < dir_syncs[-1], events
