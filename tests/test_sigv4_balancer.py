"""AWS's producer SDK uploading through the cluster layout's load balancer with SigV4 on.

The SDK signs PutMedia's hop-by-hop `connection` and `transfer-encoding` headers, and
HAProxy in HTTP mode consumes `Connection`: kvslite must still accept the signature (from
the values a client can have sent for those two) while checking every other signed header
exactly. Two nodes on PostgreSQL and SeaweedFS behind HAProxy (examples/local_cluster.py),
and HAProxy alone in front of a socket that records what it forwards.
"""

from __future__ import annotations

import socket
import threading

import boto3
import pytest
from botocore.config import Config
from cluster_engines import free_ports
from conftest import metric
from kvs_media import producer_sdk_put_media, sign_v4
from local_cluster import HAProxy, LocalCluster
from test_local_cluster import need_engines

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # a cluster behind HAProxy

KEY, SECRET = "AKIAKVSLITEBALANCER", "kvslite-balancer-secret"
START_MS = 1795756324836


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_engines()
    with LocalCluster(tmp_path_factory.mktemp("signed-cluster"), nodes=2, node_args=[
            "--access-key-id", KEY, "--secret-access-key", SECRET]) as started:
        yield started


def signed_client(endpoint_url: str, service: str):
    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                        config=Config(retries={"max_attempts": 1}))


def ingested(node) -> float:
    """The node's kvslite_fragments_ingested_total."""
    return metric(node, "kvslite_fragments_ingested_total")


def test_producer_sdk_put_media_through_the_load_balancer(cluster, h264):
    kvs = signed_client(cluster.endpoint_url, "kinesisvideo")
    streams = ["sdk-a", "sdk-b"]
    for stream in streams:
        kvs.create_stream(StreamName=stream, DataRetentionInHours=1)
    for stream in streams:  # round robin: one upload on each node
        status, code, acks, body = producer_sdk_put_media(
            cluster.port, stream, synthetic.to_mkv(h264, START_MS), key=KEY, secret=SECRET)
        assert (status, code) == (200, None), body
        assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 4
    assert [ingested(node) for node in cluster.nodes] == [4.0, 4.0]
    for stream in streams:
        for node in cluster.nodes:  # stored, and seen by every node
            fragments = signed_client(node.endpoint, "kinesis-video-archived-media") \
                .list_fragments(StreamName=stream)["Fragments"]
            assert len(fragments) == 4


@pytest.fixture(scope="module")
def target(cluster) -> str:
    """A stream that the refused uploads below name on the wire."""
    signed_client(cluster.endpoint_url, "kinesisvideo").create_stream(
        StreamName="sdk-target", DataRetentionInHours=1)
    return "sdk-target"


@pytest.mark.parametrize("signed, sent", [
    ({"x-amzn-stream-name": "sdk-elsewhere"}, {}),  # signed for another stream
    ({}, {"x-amzn-fragment-timecode-type": "RELATIVE"}),
    ({}, {"user-agent": None}),
    # signed a value no client sends on PutMedia; the balancer drops what was sent
    ({"connection": "upgrade"}, {"connection": "keep-alive"}),
], ids=["stream", "timecode-type", "no-user-agent", "connection-upgrade"])
def test_other_signed_headers_are_checked_through_the_load_balancer(cluster, target, h264,
                                                                    signed, sent):
    status, code, acks, _ = producer_sdk_put_media(
        cluster.port, target, synthetic.to_mkv(h264, START_MS), key=KEY, secret=SECRET,
        signed=signed, sent={"x-amzn-stream-name": target, **sent})
    assert (status, code, acks) == (403, "InvalidSignatureException", [])
    archived = signed_client(cluster.endpoint_url, "kinesis-video-archived-media")
    assert archived.list_fragments(StreamName=target)["Fragments"] == []


def test_wrong_secret_through_the_load_balancer(cluster, target, h264):
    status, code, acks, _ = producer_sdk_put_media(
        cluster.port, target, synthetic.to_mkv(h264, START_MS), key=KEY, secret="wrong")
    assert (status, code, acks) == (403, "InvalidSignatureException", [])


# -- what HAProxy does to the head of the SDK's PutMedia ----------------------------------

class HeadRecorder:
    """A socket on `port` that answers every request 200 and keeps each POST's head."""

    def __init__(self, port: int):
        self.server = socket.create_server(("127.0.0.1", port))
        self.heads: list[bytes] = []
        self.posted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            if head.startswith(b"POST"):
                self.heads.append(head.split(b"\r\n\r\n")[0])
                self.posted.set()

    def close(self) -> None:
        self.server.close()


def test_haproxy_drops_connection_and_keeps_the_rest(tmp_path):
    """Why kvslite reconstructs `connection`: HAProxy in HTTP mode (the layout
    examples/local_cluster.py writes) forwards the SDK's PutMedia head without it, and every
    other header, transfer-encoding included, as the client sent it."""
    need_engines()
    node_port, balancer_port = free_ports(2)
    recorder = HeadRecorder(node_port)
    haproxy = HAProxy(tmp_path, balancer_port, {"recorder": node_port})
    try:
        haproxy.start()
        sent = sign_v4("POST", "/putMedia", {
            "host": "127.0.0.1", "connection": "keep-alive", "transfer-encoding": "chunked",
            "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.5.0", "x-amzn-stream-name": "cam"},
            key=KEY, secret=SECRET, payload_hash="")
        with socket.create_connection(("127.0.0.1", balancer_port), timeout=10) as client:
            client.sendall(b"POST /putMedia HTTP/1.1\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in sent.items()).encode()
                + b"\r\n0\r\n\r\n")
            assert recorder.posted.wait(10)
        [head] = recorder.heads
        lines = head.decode().split("\r\n")
        assert lines[0] == "POST /putMedia HTTP/1.1"
        forwarded = dict(line.split(": ", 1) for line in lines[1:])
        assert forwarded == {name: value for name, value in sent.items()
                             if name != "connection"}
    finally:
        haproxy.stop()
        recorder.close()
