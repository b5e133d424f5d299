"""The producer's failover: a lost connection is retried with backoff, and every fragment
not yet acknowledged is sent again; the server stores each fragment once.

A real server behind a small TCP relay that sabotages the first connection: it lets the
first PERSISTED ack through, then withholds the acks that follow (so fragments are stored
but the producer does not know) and cuts the connection. The node-death case, a kill -9
behind a load balancer, is in test_cluster_failover.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import ServerProcess, free_port

from kvslite.media import synthetic
from kvslite.client.producer import (AckError, HttpError, Producer, ProducerError, SourceError,
                              VideoFormat)
from kvslite.client.producer.acks import Ack
from kvslite.client.producer.failover import MAX_BACKOFF_S, backoff_s, retryable

START_MS = 1_700_000_000_000


def video(h264) -> VideoFormat:
    return VideoFormat("h264", h264.codec_private, 320, 240, 25)


class AckWithholdingRelay:
    """127.0.0.1:port -> the server. The first PutMedia connection passes the first
    PERSISTED ack, withholds the next `withhold` ones, then is cut; every other connection
    passes untouched."""

    def __init__(self, upstream_port: int, withhold: int = 2):
        self.upstream_port, self.withhold = upstream_port, withhold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.put_media_connections = 0
        self.withheld_acks = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        head = client.recv(65536)
        server.sendall(head)
        sabotage = False
        if head.startswith(b"POST /putMedia"):
            self.put_media_connections += 1
            sabotage = self.put_media_connections == 1
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
        self._pump(server, client, sabotage)

    def _pump(self, src: socket.socket, dst: socket.socket, sabotage: bool = False) -> None:
        passed = False  # the first PERSISTED ack went through
        try:
            while data := src.recv(65536):
                if sabotage and passed:
                    self.withheld_acks += data.count(b'"PERSISTED"')
                    if self.withheld_acks >= self.withhold:
                        break  # stored, never acknowledged: cut the connection
                    continue
                if sabotage and (at := data.find(b'"PERSISTED"')) >= 0:
                    passed = True  # let that ack's line through, hold back the rest
                    cut = data.find(b"\r\n", data.find(b"}", at)) + 2
                    data, held = data[:cut], data[cut:]
                    self.withheld_acks += held.count(b'"PERSISTED"')
                dst.sendall(data)
                if sabotage and self.withheld_acks >= self.withhold:
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


def listed(server, stream: str) -> list[dict]:
    fragments = server.client("kinesis-video-archived-media").list_fragments(
        StreamName=stream)["Fragments"]
    return sorted(fragments, key=lambda f: f["ProducerTimestamp"])


@pytest.mark.slow
def test_lost_acks_are_resent_and_stored_once(server, h264):
    server.client("kinesisvideo").create_stream(StreamName="failover", DataRetentionInHours=1)
    relay = AckWithholdingRelay(server.port)
    retries = []
    try:
        producer = Producer("failover", endpoint_url=server.endpoint, region="us-east-1",
                            credentials=("AKIDEXAMPLE", "secret"), data_endpoint=relay.endpoint)
        summary = producer.put(h264.packets, video(h264),
                               start_timestamp=START_MS,
                               on_retry=lambda e, delay, s: retries.append((str(e), delay)))
    finally:
        relay.close()
    assert relay.put_media_connections == 2 and relay.withheld_acks >= 2
    assert len(retries) == 1 and summary.retries == 1
    assert 0 < retries[0][1] <= MAX_BACKOFF_S
    # the withheld fragments went again; the server knew them and acked them once more
    assert summary.fragments_resent >= 2
    assert (summary.fragments_sent, summary.fragments_persisted) == (4, 4)
    assert sorted(summary.fragment_timecodes) == [START_MS + 1000 * i for i in range(4)]
    fragments = listed(server, "failover")
    assert [f["FragmentNumber"] for f in fragments] == \
        [summary.fragment_numbers[summary.fragment_timecodes.index(START_MS + 1000 * i)]
         for i in range(4)]  # stored once each, in order, under the numbers acked
    assert "1 reconnect (" in summary.line()


@pytest.mark.slow
def test_put_cli_shows_its_retries(h264, tmp_path):
    source = tmp_path / "camera.mkv"
    source.write_bytes(synthetic.to_mkv(h264, 0))
    server = ServerProcess(tmp_path / "data")
    relay = AckWithholdingRelay(server.port)  # GetDataEndpoint must answer with the relay
    server.extra_args += ["--public-url", relay.endpoint]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        server.start()
        result = subprocess.run(
            [sys.executable, "-m", "kvslite", "put", "failover-cli", str(source), "--create",
             "--endpoint-url", relay.endpoint, "--start-timestamp", str(START_MS // 1000)],
            env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert relay.put_media_connections == 2
        assert "retry 1: " in result.stderr and "reconnecting in" in result.stderr
        assert "4 fragments persisted" in result.stdout
        assert "1 reconnect (" in result.stdout
        assert len(listed(server, "failover-cli")) == 4
    finally:
        relay.close()
        server.stop()


@pytest.mark.slow
def test_gives_up_after_max_retries_in_a_row(h264):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens
    producer = Producer("nowhere", endpoint_url=dead, data_endpoint=dead, region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"), max_retries=2, connect_timeout=1)
    with pytest.raises(ProducerError) as err:
        producer.put(h264.packets, video(h264), start_timestamp=START_MS)
    assert "cannot connect" in str(err.value)
    assert err.value.summary.retries == 2


def test_errors_about_the_media_are_not_retried(server, h264):
    server.client("kinesisvideo").create_stream(StreamName="no-retry", DataRetentionInHours=1)
    producer = Producer("no-retry", endpoint_url=server.endpoint, region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"))
    retries = []
    with pytest.raises(AckError) as err:  # an hour in the future: refused, and would be again
        producer.put(h264.packets, video(h264),
                     start_timestamp=START_MS * 2, on_retry=lambda *a: retries.append(a))
    assert err.value.error_id == 4007 and retries == [] and err.value.summary.retries == 0


def ack(error_id: int) -> Ack:
    return Ack("ERROR", error_id=error_id)


@pytest.mark.parametrize("error, expected", [
    (ProducerError("connection lost while reading acks"), True),
    (HttpError(503, "ServiceUnavailable", "busy"), True),
    (HttpError(400, "ConnectionLimitExceededException", "held"), True),
    (HttpError(404, "ResourceNotFoundException", "no such stream"), False),
    (HttpError(403, "NotAuthorizedException", "bad signature"), False),
    (AckError(ack(4000)), True),   # STREAM_READ_ERROR: a stall, a lost slot
    (AckError(ack(5000)), True),   # INTERNAL_ERROR
    (AckError(ack(4007)), False),  # INVALID_PRODUCER_TIMESTAMP: the data itself
    (AckError(ack(4008)), False),  # STREAM_NOT_ACTIVE: deleted
    (SourceError("no keyframe"), False),
])
def test_which_failures_are_retried(error, expected):
    assert retryable(error) is expected


def test_backoff_doubles_up_to_a_cap():
    waits = [backoff_s(n) for n in range(1, 10)]
    assert 0.375 <= waits[0] <= 0.5
    assert all(w <= MAX_BACKOFF_S for w in waits) and waits[-1] >= 0.75 * MAX_BACKOFF_S
