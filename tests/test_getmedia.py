"""GetMedia: the archive from any start selector, then live fragments as they land."""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError

from kvs_media import PutMediaConnection, persisted_numbers, put_mkv, wait_until
from kvslite.media import mkv, synthetic

START_MS = int(time.time() * 1000) - 600_000


@pytest.fixture(scope="module")
def video():
    return synthetic.encode_video("h264", seconds=2, gop=10, bframes=2)  # 5 fragments


@pytest.fixture(scope="module")
def stream(shared_server, kvs, video):
    kvs.create_stream(StreamName="gm", DataRetentionInHours=24)
    acks = put_mkv(shared_server.port, "gm", synthetic.to_mkv(video, START_MS))
    return [a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"]


@pytest.fixture(scope="module")
def media(shared_server):
    return shared_server.client("kinesis-video-media")


def read_fragments(payload, count: int, timeout=20.0) -> list[dict]:
    """Parse the live MKV stream until `count` fragments arrived; returns their tags."""
    reader = mkv.MkvReader()
    fragments, current = [], {}
    deadline = time.monotonic() + timeout
    while len(fragments) < count and time.monotonic() < deadline:
        # read1 returns what has arrived; read(n) would wait for n bytes of a live stream
        chunk = payload._raw_stream.read1(65536)
        if not chunk:
            break
        for event in reader.feed(chunk):
            if isinstance(event, mkv.Tags):
                current.update(event.tags)
                if "AWS_KINESISVIDEO_CONTINUATION_TOKEN" in current:
                    fragments.append(current)
                    current = {}
            elif isinstance(event, mkv.Cluster):
                current["cluster"] = event
    return fragments


def numbers_of(fragments):
    return [f["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for f in fragments]


@pytest.mark.slow
def test_earliest(media, stream):
    response = media.get_media(StreamName="gm", StartSelector={"StartSelectorType": "EARLIEST"})
    assert response["ContentType"] == "video/webm"
    fragments = read_fragments(response["Payload"], 5)
    assert numbers_of(fragments) == stream
    for fragment in fragments:
        assert fragment["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == \
            fragment["AWS_KINESISVIDEO_FRAGMENT_NUMBER"]
        assert int(fragment["AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"]) >= 0
        assert fragment["cluster"].frames[0].keyframe
    response["Payload"].close()


def test_after_fragment_number_and_continuation_token(media, stream):
    for kind, member in (("FRAGMENT_NUMBER", "AfterFragmentNumber"),
                         ("CONTINUATION_TOKEN", "ContinuationToken")):
        response = media.get_media(StreamName="gm", StartSelector={
            "StartSelectorType": kind, member: stream[1]})
        assert numbers_of(read_fragments(response["Payload"], 3)) == stream[2:]
        response["Payload"].close()


def test_producer_timestamp_starts_with_the_fragment_that_holds_it(media, stream, video):
    middle_of_third = START_MS + 2 * 400 + 150
    response = media.get_media(StreamName="gm", StartSelector={
        "StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": middle_of_third / 1000})
    assert numbers_of(read_fragments(response["Payload"], 3)) == stream[2:]
    response["Payload"].close()


def test_now_follows_fragments_put_after_the_call(shared_server, kvs, media, video):
    kvs.create_stream(StreamName="gm-live", DataRetentionInHours=24)
    put_mkv(shared_server.port, "gm-live", synthetic.to_mkv(video, START_MS))  # old, skipped
    response = media.get_media(StreamName="gm-live", StartSelector={"StartSelectorType": "NOW"})
    live_start = START_MS + 100_000
    # NOW was fixed when the response started (get_media returned), so an upload begun
    # from here on comes after it: no delay needed, it runs while the reader follows
    uploader = threading.Thread(target=put_mkv, args=(shared_server.port, "gm-live",
                                                      synthetic.to_mkv(video, live_start)))
    uploader.start()
    fragments = read_fragments(response["Payload"], 5)
    uploader.join()
    response["Payload"].close()
    assert [f["cluster"].timecode for f in fragments] == \
        [c.timecode for c in synthetic.clusters(video, live_start)]


def test_get_media_errors(shared_server, media, stream):
    client = shared_server.client("kinesis-video-media", validate=False)
    with pytest.raises(ClientError) as e:
        client.get_media(StreamName="gm", StartSelector={"StartSelectorType": "FRAGMENT_NUMBER"})
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    with pytest.raises(ClientError) as e:
        client.get_media(StreamName="gm", StartSelector={
            "StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "9" + "0" * 45 + "9"})
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as e:
        client.get_media(StreamName="nope", StartSelector={"StartSelectorType": "NOW"})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# -- at most 3 connections per stream, a slot freed on close ------------------------------

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


def refusal(media, selector_type: str) -> str:
    """The error code of a GetMedia on "gm-limit" that must be refused."""
    with pytest.raises(ClientError) as e:
        media.get_media(StreamName="gm-limit", StartSelector={"StartSelectorType": selector_type})
    return e.value.response["Error"]["Code"]


def test_get_media_admits_three_connections_per_stream_and_frees_a_slot_on_close(
        shared_server, kvs):
    video = synthetic.encode_video("h264", seconds=2, gop=10, bframes=0)  # 400-ms fragments
    kvs.create_stream(StreamName="gm-limit", DataRetentionInHours=1)
    feed = LiveFeed(shared_server.port, "gm-limit", video, START_MS)
    media = shared_server.client("kinesis-video-media")
    opened = []
    try:
        assert persisted_numbers(feed.conn.wait_for("PERSISTED")), "the live feed never persisted"

        def open_one():
            response = media.get_media(StreamName="gm-limit",
                                       StartSelector={"StartSelectorType": "EARLIEST"})
            # the first bytes prove this connection is streaming (and counted) now
            assert response["Payload"]._raw_stream.read1(65536)
            opened.append(response)
            return response

        for _ in range(3):
            open_one()
        assert refusal(media, "EARLIEST") == "ConnectionLimitExceededException"

        opened.pop(0)["Payload"].close()

        def admitted():
            try:
                return open_one()
            except ClientError as e:
                assert e.response["Error"]["Code"] == "ConnectionLimitExceededException"
                return None

        wait_until(admitted, timeout=8, what="the slot a closed GetMedia held")
        # the two that stayed open still count: three again, the next one is refused
        assert refusal(media, "NOW") == "ConnectionLimitExceededException"
    finally:
        for response in opened:
            response["Payload"].close()
        feed.close()
