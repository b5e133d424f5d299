"""Two kvslite nodes on PostgreSQL and SeaweedFS behind HAProxy (examples/local_cluster.py)
when an engine or a node blinks: a producer whose node freezes (SIGSTOP) fails over within
its ack timeout; with S3 down every node stays ready, the control plane answers and
PutMedia fails with ERROR 5001; with PostgreSQL down /ready says 503 at once.

The cluster has engines of its own (not the session's SeaweedFS), so stopping them here
disturbs no other test. The PostgreSQL test stops the database for good: it runs last.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import pytest
from kvs_media import PutMediaConnection, wait_until
from local_cluster import LocalCluster
from test_cluster_failover import listed, ms, put_media_holder
from test_local_cluster import need_engines

from kvslite.media import synthetic
from kvslite.client.producer import Producer, VideoFormat

pytestmark = pytest.mark.slow  # a cluster, and outages that last seconds

NOW_MS = int(time.time() * 1000)
ACK_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_engines()
    with LocalCluster(tmp_path_factory.mktemp("outages"), nodes=2) as started:
        yield started


def get_ready(endpoint: str) -> tuple[int | None, bytes, float]:
    """GET /ready: (status or None if nothing answered in 10 s, body, seconds taken)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"{endpoint}/ready", timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError:
        status, body = None, b""
    return status, body, time.monotonic() - started


def test_a_frozen_node_is_failed_over_within_the_ack_timeout(cluster):
    camera = synthetic.encode_video("h264", seconds=12, gop=25, bframes=0, width=160,
                                    height=120)
    cluster.client("kinesisvideo").create_stream(StreamName="frozen", DataRetentionInHours=1)
    start_ms = NOW_MS - 60_000
    frozen, retried_at = [], []

    def on_ack(ack, summary):
        if ack.event_type == "PERSISTED" and summary.fragments_persisted == 3 and not frozen:
            holder = put_media_holder(cluster)
            holder.proc.send_signal(signal.SIGSTOP)  # alive but silent, its socket open
            frozen.append((holder, time.monotonic()))

    def on_retry(error, delay, summary):
        retried_at.append(time.monotonic())

    producer = Producer("frozen", endpoint_url=cluster.endpoint_url, region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"), ack_timeout=ACK_TIMEOUT_S)
    try:
        summary = producer.put(camera.packets, VideoFormat("h264", camera.codec_private, 160,
                                                           120, 25),
                               start_timestamp=start_ms, realtime=True, on_ack=on_ack,
                               on_retry=on_retry)
    finally:
        for holder, _ in frozen:
            holder.proc.send_signal(signal.SIGCONT)
    holder, frozen_at = frozen[0]
    # given up on within the ack timeout, plus the GOP sent after the last ack and a poll
    assert retried_at and retried_at[0] - frozen_at < ACK_TIMEOUT_S + 2.5
    # every GOP stored exactly once, the unacknowledged ones resent to the other node
    assert summary.fragments_persisted == len(set(summary.fragment_numbers)) == 12
    assert summary.fragments_resent >= 1
    fragments = listed(cluster.client("kinesis-video-archived-media"), "frozen")
    assert [ms(f["ProducerTimestamp"]) for f in fragments] == \
        [start_ms + 1000 * i for i in range(12)]
    # woken once the upload ended elsewhere, the frozen node says what happened: its lease
    # expired, and (the producer having finished and let go) nobody holds it
    wait_until(lambda: "lost its lease" in holder.output(), timeout=10,
               what="the frozen node to log its lost lease")
    log = holder.output()
    assert "lost its lease on the stream: it expired" in log, log
    assert "no other upload holds it" in log and "took over" not in log, log


def test_an_s3_outage_leaves_every_node_ready_and_the_control_plane_up(cluster, h264):
    cluster.client("kinesisvideo").create_stream(StreamName="outage", DataRetentionInHours=1)
    s3_port = cluster.s3.endpoint_url.rsplit(":", 1)[1]
    cluster.seaweed.stop()
    try:
        for node in cluster.nodes:
            status, body, _ = get_ready(node.endpoint)
            assert status == 200
            assert json.loads(body) == {"status": "ready", "metadata": "ok",
                                        "media": "unreachable"}
            for secret in (s3_port, cluster.bucket, cluster.media_url, "s3://"):
                assert secret not in body.decode()
        # two seconds of control-plane calls through the load balancer: every one answers
        control = cluster.client("kinesisvideo")
        statuses = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for call in (lambda: control.list_streams(),
                         lambda: control.describe_stream(StreamName="outage")):
                statuses.append(call()["ResponseMetadata"]["HTTPStatusCode"])
        assert len(statuses) >= 4 and set(statuses) == {200}
        assert cluster.haproxy.server_states() == {"node0": "UP", "node1": "UP"}
        # media fails with its own error: PutMedia's ARCHIVAL_ERROR, not INTERNAL_ERROR
        upload = PutMediaConnection(cluster.nodes[0].port, "outage")
        try:
            upload.send(synthetic.to_mkv(h264, NOW_MS - 30_000))
            upload.finish()
            acks = upload.all_acks(timeout=40)  # the write's retries with backoff first
        finally:
            upload.close()
        assert [(a["EventType"], a.get("ErrorId"), a.get("ErrorCode")) for a in acks] == \
            [("ERROR", 5001, "ARCHIVAL_ERROR")]
        assert "the media store is unreachable" in cluster.nodes[0].output()
    finally:
        cluster.seaweed.start()
    wait_until(lambda: json.loads(get_ready(cluster.nodes[0].endpoint)[1])["media"] == "ok",
               timeout=10, what="the media store to answer again")


def test_ready_answers_at_once_when_postgres_is_down(cluster):
    """Last in this module: the database stays down."""
    port = str(cluster.postgres.port)
    cluster.postgres.stop(remove=False)
    for node in cluster.nodes:
        status, body, took = get_ready(node.endpoint)
        assert (status, took < 3.0) == (503, True), (status, took)
        assert json.loads(body)["metadata"] == "unreachable"
        assert port not in body.decode()
