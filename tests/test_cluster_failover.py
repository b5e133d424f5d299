"""Three kvslite nodes on PostgreSQL and SeaweedFS behind HAProxy (examples/local_cluster.py),
driven as users would: a producer survives the death (kill -9) of the node it uploads to;
every node gives the same answers; a live GetMedia on one node follows ingest on another;
a node whose clock runs behind never sends a stream's server timestamps backwards; and
retention frees S3 objects.
"""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.request

import av
import pytest
from engines import LIBFAKETIME, need
from conftest import metric
from kvs_media import wait_until
from local_cluster import LocalCluster
from test_local_cluster import three_nodes

from kvslite.media import synthetic
from kvslite.client.producer import Producer, VideoFormat

pytestmark = pytest.mark.slow  # a cluster: PostgreSQL, SeaweedFS, HAProxy and three nodes

NOW_MS = int(time.time() * 1000)
NUMBER = re.compile(rb"9\d{46}")  # a fragment number, as GetMedia's Tags carry it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with three_nodes(tmp_path_factory) as started:
        yield started


@pytest.fixture(scope="module")
def camera():
    """20 s of 1-s GOPs: long enough to kill a node in the middle of a real-time upload."""
    return synthetic.encode_video("h264", seconds=20, gop=25, bframes=0, width=160, height=120)


def video(encoded) -> VideoFormat:
    return VideoFormat("h264", encoded.codec_private, encoded.width, encoded.height, 25)


def put_media_holder(cluster: LocalCluster):
    """The node serving an open PutMedia, from its /metrics."""
    for node in cluster.nodes:
        if not node.running:
            continue
        if metric(node, "kvslite_open_connections", kind="put_media") >= 1:
            return node
    return None


def listed(client, stream: str) -> list[dict]:
    fragments, token = [], None
    while True:
        page = client.list_fragments(StreamName=stream, **({"NextToken": token} if token else {}))
        fragments += page["Fragments"]
        token = page.get("NextToken")
        if not token:
            return sorted(fragments, key=lambda f: f["ProducerTimestamp"])


def ms(timestamp) -> int:
    return round(timestamp.timestamp() * 1000)


def test_producer_fails_over_when_its_node_is_killed(cluster, camera):
    cluster.client("kinesisvideo").create_stream(StreamName="failover", DataRetentionInHours=1)
    start_ms = NOW_MS - 60_000
    acked: list[str] = []  # fragment numbers acknowledged PERSISTED, in order
    killed = []

    def on_ack(ack, summary):
        if ack.event_type == "PERSISTED":
            acked.append(ack.fragment_number)
        if len(acked) == 5 and not killed:  # mid-upload: kill the node taking it
            holder = put_media_holder(cluster)
            holder.kill()
            killed.append(holder)

    producer = Producer("failover", endpoint_url=cluster.endpoint_url, region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"))
    summary = producer.put(camera.packets, video(camera), start_timestamp=start_ms,
                           realtime=True, on_ack=on_ack)
    try:
        assert killed and summary.retries >= 1
        # every one of the 20 GOPs is stored exactly once, under the numbers acknowledged
        assert summary.fragments_persisted == len(set(summary.fragment_numbers)) == 20
        fragments = listed(cluster.client("kinesis-video-archived-media"), "failover")
        assert [ms(f["ProducerTimestamp"]) for f in fragments] == \
            [start_ms + 1000 * i for i in range(20)]
        assert set(acked) <= {f["FragmentNumber"] for f in fragments}  # nothing acked lost
        # and the video is continuous: every frame, in order, decodes
        media = cluster.client("kinesis-video-archived-media").get_media_for_fragment_list(
            StreamName="failover", Fragments=[f["FragmentNumber"] for f in fragments])
        with av.open(io.BytesIO(media["Payload"].read()), format="matroska") as container:
            frames = [frame.pts for frame in container.decode(video=0)]
        assert len(frames) == len(camera.packets) == 500
        assert frames == sorted(frames)
    finally:
        for node in killed:
            node.start()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_every_node_gives_the_same_answers(cluster, h264):
    cluster.client("kinesisvideo").create_stream(StreamName="same", DataRetentionInHours=1)
    start_ms = NOW_MS - 30_000
    Producer("same", endpoint_url=cluster.endpoint_url, region="us-east-1",
             credentials=("AKIDEXAMPLE", "secret")).put(h264.packets, video(h264),
                                                        start_timestamp=start_ms)
    span = {"StartTimestamp": start_ms / 1000, "EndTimestamp": (start_ms + 3900) / 1000}
    # one HLS session, opened on the first node: its token must verify on every node
    session_url = cluster.nodes[0].client("kinesis-video-archived-media") \
        .get_hls_streaming_session_url(StreamName="same", PlaybackMode="ON_DEMAND",
                                       HLSFragmentSelector={
                                           "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                                           "TimestampRange": span})["HLSStreamingSessionURL"]
    answers = []
    for node in cluster.nodes:
        archived = node.client("kinesis-video-archived-media")
        images = archived.get_images(StreamName="same", ImageSelectorType="PRODUCER_TIMESTAMP",
                                     SamplingInterval=500, Format="JPEG", **span)["Images"]
        clip = archived.get_clip(StreamName="same", ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": span})
        here = session_url.replace(cluster.nodes[0].endpoint, node.endpoint)
        master = fetch(here).decode()
        media_playlist = here.rsplit("/", 1)[0] + "/" + [
            line for line in master.splitlines() if line and not line.startswith("#")][0]
        answers.append(([(i["TimeStamp"], i["ImageContent"]) for i in images],
                        clip["Payload"].read(), master, fetch(media_playlist)))
    assert len(answers[0][0]) == 8 and all(content for _, content in answers[0][0])
    assert answers[0][1][4:8] == b"ftyp"  # an MP4 clip
    assert answers[0][3].count(b"#EXTINF") == 4
    assert answers[0] == answers[1] == answers[2]


def test_live_get_media_on_one_node_follows_ingest_on_another(cluster, camera):
    writer, reader = cluster.nodes[0], cluster.nodes[1]
    cluster.client("kinesisvideo").create_stream(StreamName="live", DataRetentionInHours=1)
    persisted_at: dict[bytes, float] = {}
    seen_at: dict[bytes, float] = {}
    stream = reader.client("kinesis-video-media").get_media(
        StreamName="live", StartSelector={"StartSelectorType": "NOW"})["Payload"]

    def follow():
        data = b""
        while len(seen_at) < 6 and (chunk := stream.read(4096)):
            data += chunk
            for number in NUMBER.findall(data):
                seen_at.setdefault(number, time.monotonic())
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()

    def on_ack(ack, summary):
        if ack.event_type == "PERSISTED":
            persisted_at[ack.fragment_number.encode()] = time.monotonic()
    Producer("live", endpoint_url=writer.endpoint, data_endpoint=writer.endpoint,
             region="us-east-1", credentials=("AKIDEXAMPLE", "secret")).put(
        camera.packets[:150], video(camera), start_timestamp=NOW_MS - 10_000, realtime=True,
        on_ack=on_ack)
    follower.join(10)
    stream.close()
    assert len(persisted_at) == 6 and set(persisted_at) <= set(seen_at)
    lags = [seen_at[n] - persisted_at[n] for n in persisted_at]
    assert max(lags) < 1.0, lags  # within a second, woken by NOTIFY, not a polling loop


def test_a_lagging_node_never_sends_server_time_back(cluster, h264):
    need(LIBFAKETIME is not None, "Debian's libfaketime")
    ahead, lagging = cluster.nodes[0], cluster.nodes[2]
    lagging.kill()
    original_env = lagging.env
    lagging.env = {**original_env, "LD_PRELOAD": LIBFAKETIME, "FAKETIME": "-30s",
                   "DONT_FAKE_MONOTONIC": "1"}  # S3 still accepts a signature 30 s old
    try:
        lagging.start()
        cluster.client("kinesisvideo").create_stream(StreamName="skew", DataRetentionInHours=1)
        start_ms = NOW_MS - 120_000
        for node, offset in ((ahead, 0), (lagging, 4000)):
            Producer("skew", endpoint_url=node.endpoint, data_endpoint=node.endpoint,
                     region="us-east-1", credentials=("AKIDEXAMPLE", "secret")).put(
                h264.packets, video(h264), start_timestamp=start_ms + offset)
        fragments = listed(cluster.client("kinesis-video-archived-media"), "skew")
        server = [ms(f["ServerTimestamp"]) for f in fragments]
        assert len(server) == 8 and server == sorted(server)
        # the lagging node's fragments are held at the last one the other node stored
        assert server[4:] == [server[3]] * 4
        assert "clock is" in lagging.output() and "NTP" in lagging.output()
    finally:
        lagging.kill()
        lagging.env = original_env
        lagging.start()


def test_retention_frees_s3_objects(cluster, h264, monkeypatch):
    """The sweepers of the running nodes remove fragments past retention, rows and S3
    objects. No node's clock can be hours ahead (S3 refuses skewed signatures), so the
    sweep is the real Sweeper on the cluster's engines with its clock two hours ahead."""
    from kvslite.server.archive.retention import Sweeper
    from kvslite.server.store.urls import open_blob_store, open_metadata_store

    cluster.client("kinesisvideo").create_stream(StreamName="expiring", DataRetentionInHours=1)
    Producer("expiring", endpoint_url=cluster.endpoint_url, region="us-east-1",
             credentials=("AKIDEXAMPLE", "secret")).put(h264.packets, video(h264),
                                                        start_timestamp=NOW_MS - 10_000)
    s3 = cluster.s3.client()

    def objects() -> int:
        listed_objects = s3.list_objects_v2(Bucket=cluster.bucket, Prefix="media/")
        return sum(1 for o in listed_objects.get("Contents", []) if "expiring" in o["Key"])
    assert objects() == 4
    for name, value in (("AWS_ACCESS_KEY_ID", cluster.s3.access_key),
                        ("AWS_SECRET_ACCESS_KEY", cluster.s3.secret_key),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    store = open_metadata_store(cluster.database_url)
    blobs = open_blob_store(cluster.media_url, s3_endpoint_url=cluster.s3.endpoint_url)
    try:
        sweeper = Sweeper(store, blobs, interval_s=1, orphan_grace_s=60, shared=True,
                          clock=lambda: time.time() + 2 * 3600)
        # a pass runs when this sweeper gets the cluster's sweeping lease between the nodes';
        # a node killed by an earlier test while sweeping holds it for up to 60 s
        def swept() -> bool:
            sweeper.sweep()
            return objects() == 0
        wait_until(swept, timeout=90, what="the expired fragments' S3 objects to go")
    finally:
        store.close()
    assert listed(cluster.client("kinesis-video-archived-media"), "expiring") == []


def test_event_configurations_are_seen_by_every_node(cluster):
    cluster.nodes[0].client("kinesisvideo").create_stream(StreamName="configured",
                                                          DataRetentionInHours=1)
    config = {"Status": "ENABLED", "DestinationConfig": {"Uri": "https://hooks.example/kvs"}}
    cluster.nodes[0].client("kinesisvideo").update_notification_configuration(
        StreamName="configured", NotificationConfiguration=config)
    for node in cluster.nodes[1:]:
        assert node.client("kinesisvideo").describe_notification_configuration(
            StreamName="configured")["NotificationConfiguration"] == config
