"""Retention end to end: fragments older than DataRetentionInHours on the SERVER clock are
swept away by a real `kvslite serve`, from every read API and from the disk.

Nobody waits 90 minutes: server A runs under libfaketime 90 minutes in the past and receives
the "old" batch (its ServerTimestamps are ~90 min ago); it is stopped and server B, on the
real clock and with a 0.5 s sweep, takes over the same data directory and receives the
"new" batch. With retention 1 h the old batch must go, the new one must stay.
"""

from __future__ import annotations

import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from engines import LIBFAKETIME, need
from botocore.exceptions import ClientError
from conftest import ServerProcess
from kvs_media import persisted_numbers, put_mkv, wait_until

from kvslite.media import mkv, synthetic

pytestmark = pytest.mark.slow  # a server on a shifted clock, sweeps over seconds

need(LIBFAKETIME is not None, "Debian's libfaketime")

SHIFT_MIN = 90  # server A's clock runs this far behind
SWEEP_S = 0.5  # server B's sweep interval
STREAMS = {"ret-1h": 1, "ret-2h": 2, "ret-24h": 24}
FRAGMENTS = 4  # the standard h264 fixture: 4 s in 1 s GOPs


def listed(archived, stream: str) -> list[dict]:
    pages = archived.get_paginator("list_fragments").paginate(StreamName=stream)
    return [f for page in pages for f in page["Fragments"]]


def numbers(archived, stream: str) -> list[str]:
    return sorted(f["FragmentNumber"] for f in listed(archived, stream))


def media_files(data_dir: Path) -> set[str]:
    """Every file under <data-dir>/media, as a blob key."""
    root = data_dir / "media"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def stream_files(data_dir: Path, arn: str, name: str) -> set[str]:
    prefix = f"streams/{arn.rsplit('/', 1)[1]}-{name}/"
    return {k for k in media_files(data_dir) if k.startswith(prefix)}


def blob_keys(data_dir: Path, arn: str) -> set[str]:
    """The blob keys the stream's fragment rows refer to (read-only look at the DB)."""
    conn = sqlite3.connect(f"file:{data_dir / 'kvslite.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT blob_key FROM fragments WHERE arn = ?",
                                               (arn,))}
    finally:
        conn.close()


def get_images(archived, stream: str, start_ms: int, end_ms: int) -> list[dict]:
    pages = archived.get_paginator("get_images").paginate(
        StreamName=stream, ImageSelectorType="PRODUCER_TIMESTAMP", Format="JPEG",
        StartTimestamp=start_ms / 1000, EndTimestamp=end_ms / 1000, SamplingInterval=1000)
    return [image for page in pages for image in page["Images"]]


def hls_numbers(archived, stream: str, start_ms: int, end_ms: int) -> list[str]:
    """Fragment numbers an ON_DEMAND HLS session over the producer range plays."""
    url = archived.get_hls_streaming_session_url(
        StreamName=stream, PlaybackMode="ON_DEMAND",
        HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
            "StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}},
    )["HLSStreamingSessionURL"]
    url = url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist")
    with urllib.request.urlopen(url, timeout=10) as response:
        playlist = response.read().decode()
    return [line.split("FragmentNumber=")[1].split("&")[0] for line in playlist.splitlines()
            if not line.startswith("#") and "FragmentNumber=" in line]


def get_media_numbers(media, stream: str, count: int, timeout=10.0) -> list[str]:
    """Fragment numbers of the first `count` fragments GetMedia EARLIEST sends."""
    response = media.get_media(StreamName=stream, StartSelector={"StartSelectorType": "EARLIEST"})
    reader, found = mkv.MkvReader(), []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            chunk = response["Payload"]._raw_stream.read1(65536)
            if not chunk:
                break
            for event in reader.feed(chunk):
                if isinstance(event, mkv.Tags):
                    number = dict(event.tags).get("AWS_KINESISVIDEO_FRAGMENT_NUMBER")
                    if number and number not in found:
                        found.append(number)
    finally:
        response["Payload"].close()
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory, h264):
    """Old batch through server A (clock -90 min), new batch through server B (real clock)."""
    data_dir = tmp_path_factory.mktemp("retention") / "data"
    w = SimpleNamespace(data_dir=data_dir, arn={}, old={}, new={})
    a = ServerProcess(data_dir, "--min-sampling-interval-ms", "1",
                      env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"-{SHIFT_MIN}m",
                           "DONT_FAKE_MONOTONIC": "1"}).start()
    try:
        kvs = a.client("kinesisvideo")
        archived = a.client("kinesis-video-archived-media")
        w.real_at_a_ms = int(time.time() * 1000)
        # ~90 min ago on the real clock, a few seconds ago on A's: absolute timecodes
        # that are not "in the future" for A
        w.old_ms = w.real_at_a_ms - SHIFT_MIN * 60_000 - 10_000
        for name, hours in STREAMS.items():
            w.arn[name] = kvs.create_stream(StreamName=name,
                                            DataRetentionInHours=hours)["StreamARN"]
            w.old[name] = persisted_numbers(
                put_mkv(a.port, name, synthetic.to_mkv(h264, w.old_ms)))
            assert len(w.old[name]) == FRAGMENTS
        w.a_listed = listed(archived, "ret-1h")
        w.a_images = get_images(archived, "ret-1h", w.old_ms, w.old_ms + 3999)
    finally:
        assert a.stop(signal.SIGTERM) == 0, a.output()
    w.old_files = {name: stream_files(data_dir, w.arn[name], name) for name in STREAMS}

    b = ServerProcess(data_dir, "--min-sampling-interval-ms", "1",
                      env={"KVSLITE_SWEEP_INTERVAL_S": str(SWEEP_S)})
    try:
        w.server = b.start()
        w.b_started = time.monotonic()
        w.new_ms = int(time.time() * 1000) - 10_000
        for name in STREAMS:
            w.new[name] = persisted_numbers(
                put_mkv(b.port, name, synthetic.to_mkv(h264, w.new_ms)))
            assert len(w.new[name]) == FRAGMENTS
        w.kvs = b.client("kinesisvideo")
        w.archived = b.client("kinesis-video-archived-media")
        w.media = b.client("kinesis-video-media")
        yield w
    finally:
        b.stop()


def gone_from_list(w, name: str):
    return wait_until(lambda: numbers(w.archived, name) == sorted(w.new[name]),
                      what=f"the old fragments of {name} to leave ListFragments")


def test_faketime_puts_the_old_batch_90_minutes_back_on_the_server_clock(world):
    """The premise: A's ServerTimestamps are ~90 min ago, producer timestamps as sent."""
    assert sorted(f["FragmentNumber"] for f in world.a_listed) == sorted(world.old["ret-1h"])
    expected_ms = world.real_at_a_ms - SHIFT_MIN * 60_000
    for fragment in world.a_listed:
        server_ms = fragment["ServerTimestamp"].timestamp() * 1000
        assert abs(server_ms - expected_ms) < 120_000, (server_ms, expected_ms)
    assert sorted(round(f["ProducerTimestamp"].timestamp() * 1000) for f in world.a_listed) == \
        [world.old_ms + 1000 * k for k in range(FRAGMENTS)]
    # and A served the old range as images while it still had it
    assert len(world.a_images) == FRAGMENTS
    assert [i.get("Error") for i in world.a_images] == [None] * FRAGMENTS
    # every old fragment was a file on disk when A stopped
    for name in STREAMS:
        assert len(world.old_files[name]) == FRAGMENTS


def test_expired_fragments_leave_list_fragments_and_new_ones_stay(world):
    gone_from_list(world, "ret-1h")
    fragments = listed(world.archived, "ret-1h")
    assert len(fragments) == FRAGMENTS
    assert sorted(round(f["ProducerTimestamp"].timestamp() * 1000) for f in fragments) == \
        [world.new_ms + 1000 * k for k in range(FRAGMENTS)]
    # the server log says what the sweep did
    assert "fragments past retention removed" in world.server.output()


def test_expired_fragments_are_no_media_in_get_images(world):
    gone_from_list(world, "ret-1h")
    old = get_images(world.archived, "ret-1h", world.old_ms, world.old_ms + 3999)
    assert len(old) == FRAGMENTS
    assert [i.get("Error") for i in old] == ["NO_MEDIA"] * FRAGMENTS
    assert all("ImageContent" not in i for i in old)
    new = get_images(world.archived, "ret-1h", world.new_ms, world.new_ms + 3999)
    assert len(new) == FRAGMENTS
    assert [i.get("Error") for i in new] == [None] * FRAGMENTS
    assert all(i["ImageContent"] for i in new)


def test_get_media_earliest_starts_at_the_first_new_fragment(world):
    gone_from_list(world, "ret-1h")
    assert get_media_numbers(world.media, "ret-1h", FRAGMENTS) == world.new["ret-1h"]


def test_hls_over_the_expired_range_is_not_found(world):
    gone_from_list(world, "ret-1h")
    with pytest.raises(ClientError) as e:
        hls_numbers(world.archived, "ret-1h", world.old_ms, world.old_ms + 3999)
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert hls_numbers(world.archived, "ret-1h", world.new_ms, world.new_ms + 3999) == \
        world.new["ret-1h"]
    # a range over both batches plays only what is left
    assert hls_numbers(world.archived, "ret-1h", world.old_ms, world.new_ms + 3999) == \
        world.new["ret-1h"]


def test_expired_media_files_are_deleted_from_disk(world):
    gone_from_list(world, "ret-1h")
    arn = world.arn["ret-1h"]
    wait_until(lambda: not stream_files(world.data_dir, arn, "ret-1h") &
               world.old_files["ret-1h"], what="the old media files of ret-1h to go")
    files = stream_files(world.data_dir, arn, "ret-1h")
    assert len(files) == FRAGMENTS
    assert not files & world.old_files["ret-1h"]
    assert files == blob_keys(world.data_dir, arn)  # exactly the new fragments' blobs
    for key in files:  # new blobs are named <producer_ms>-<hex>.mkv
        assert int(key.rsplit("/", 1)[1].split("-")[0]) >= world.new_ms


def assert_longer_retention_keeps_the_old_batch(world):
    gone_from_list(world, "ret-1h")  # a sweep has run (it looked at every stream)
    time.sleep(max(0.0, world.b_started + 8 * SWEEP_S - time.monotonic()))
    for name in ("ret-2h", "ret-24h"):
        assert numbers(world.archived, name) == sorted(world.old[name] + world.new[name])
        files = stream_files(world.data_dir, world.arn[name], name)
        assert len(files) == 2 * FRAGMENTS
        assert world.old_files[name] <= files
    # in all: 4 (ret-1h) + 8 (ret-2h) + 8 (ret-24h) media files, nothing else
    assert len(media_files(world.data_dir)) == 5 * FRAGMENTS


def test_longer_retention_keeps_the_old_fragments_through_several_sweeps(world):
    assert_longer_retention_keeps_the_old_batch(world)


def test_decreasing_retention_expires_what_is_already_stored(world):
    assert_longer_retention_keeps_the_old_batch(world)
    version = world.kvs.describe_stream(StreamName="ret-2h")["StreamInfo"]["Version"]
    world.kvs.update_data_retention(StreamName="ret-2h", CurrentVersion=version,
                                    Operation="DECREASE_DATA_RETENTION",
                                    DataRetentionChangeInHours=1)
    assert world.kvs.describe_stream(StreamName="ret-2h")["StreamInfo"][
        "DataRetentionInHours"] == 1
    gone_from_list(world, "ret-2h")
    arn = world.arn["ret-2h"]
    wait_until(lambda: not stream_files(world.data_dir, arn, "ret-2h") &
               world.old_files["ret-2h"], what="the old media files of ret-2h to go")
    files = stream_files(world.data_dir, arn, "ret-2h")
    assert len(files) == FRAGMENTS
    assert not files & world.old_files["ret-2h"]
    assert files == blob_keys(world.data_dir, arn)
    # the 24 h stream still keeps everything
    assert numbers(world.archived, "ret-24h") == sorted(world.old["ret-24h"] +
                                                        world.new["ret-24h"])
    assert len(stream_files(world.data_dir, world.arn["ret-24h"], "ret-24h")) == 2 * FRAGMENTS
    assert len(media_files(world.data_dir)) == 4 * FRAGMENTS
