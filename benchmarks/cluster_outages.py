"""Cluster outages: what clients see while an engine or a node blinks.

A two-node cluster (examples/local_cluster.py: PostgreSQL, SeaweedFS, HAProxy in front),
started in this run, then:

  s3       SeaweedFS stopped for --s3-outage-s seconds. Meanwhile a client calls ListStreams
           and DescribeStream through the load balancer back to back: the count and HTTP
           statuses of the calls made during the outage, each node's /ready status and
           body, HAProxy's view of the nodes, and the ack a PutMedia gets.
  frozen   `Producer` (what `kvslite put` runs) uploads --seconds of 1-s GOPs in real time
           through the load balancer with --ack-timeout; after 3 PERSISTED acks the node
           holding the upload is frozen (SIGSTOP) for --freeze-s seconds. Reported: seconds
           from the freeze to the producer giving the connection up, and to the first
           PERSISTED ack after the failover; fragments persisted (every one, once); what
           the frozen node logs once woken.

Rerun:  .venv/bin/python benchmarks/cluster_outages.py [--s3-outage-s 10] [--seconds 20]
                                                       [--ack-timeout 5] [--freeze-s 20]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from local_cluster import LocalCluster  # noqa: E402

from kvslite.media import synthetic  # noqa: E402
from kvslite.client.producer import Producer, VideoFormat  # noqa: E402


def get(url: str, timeout: float = 10) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, repr(e)


def call_status(call) -> int | str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    except BotoCoreError as e:
        return type(e).__name__


def s3_outage(cluster: LocalCluster, outage_s: float) -> dict:
    control = cluster.client("kinesisvideo")
    control.create_stream(StreamName="s3-outage", DataRetentionInHours=1)
    calls = (lambda: control.list_streams(),
             lambda: control.describe_stream(StreamName="s3-outage"))
    statuses: Counter = Counter()
    cluster.seaweed.stop()
    stopped = time.monotonic()
    ready = {node.name: get(f"{node.endpoint}/ready") for node in cluster.nodes}
    while time.monotonic() - stopped < outage_s:
        for call in calls:
            statuses[call_status(call)] += 1
    states = cluster.haproxy.server_states()
    put_media = put_media_ack(cluster.nodes[0].port)
    cluster.seaweed.start()
    return {"outage_s": outage_s, "control_plane_calls": sum(statuses.values()),
            "statuses": dict(statuses), "ready": ready, "haproxy": states,
            "put_media_ack_during_outage": put_media}


def put_media_ack(port: int) -> dict:
    """The first ack but IDLE of a PutMedia of 4 s of video to the node on `port`."""
    import socket

    mkv = synthetic.to_mkv(synthetic.encode_video("h264", seconds=4, gop=25, bframes=2),
                           int(time.time() * 1000) - 30_000)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /putMedia HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                     b"x-amzn-stream-name: s3-outage\r\nx-amzn-fragment-timecode-type: "
                     b"ABSOLUTE\r\nx-amzn-producer-start-timestamp: 1700000000.000\r\n\r\n")
        sock.sendall(f"{len(mkv):x}\r\n".encode() + mkv + b"\r\n0\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    acks = [json.loads(line) for line in body.split(b"\r\n") if line.startswith(b"{")]
    return next((a for a in acks if a["EventType"] != "IDLE"), {})


def frozen_node(cluster: LocalCluster, seconds: int, ack_timeout: float,
                freeze_s: float) -> dict:
    camera = synthetic.encode_video("h264", seconds=seconds, gop=25, bframes=0, width=160,
                                    height=120)
    cluster.client("kinesisvideo").create_stream(StreamName="frozen", DataRetentionInHours=1)
    marks: dict[str, float] = {}
    frozen: list = []

    def holder():
        for node in cluster.nodes:
            _, text = get(f"{node.endpoint}/metrics", timeout=5)
            if 'kvslite_open_connections{kind="put_media"} 1' in text:
                return node

    def on_ack(ack, summary):
        if ack.event_type != "PERSISTED":
            return
        if summary.fragments_persisted == 3 and not frozen:
            node = holder()
            node.proc.send_signal(signal.SIGSTOP)
            marks["frozen"] = time.monotonic()
            frozen.append(node)
            threading.Timer(freeze_s, node.proc.send_signal, (signal.SIGCONT,)).start()
        elif "given_up" in marks and "persisted_after" not in marks:
            marks["persisted_after"] = time.monotonic()

    def on_retry(error, delay, summary):
        marks.setdefault("given_up", time.monotonic())
        marks.setdefault("reason", str(error))

    producer = Producer("frozen", endpoint_url=cluster.endpoint_url, region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"), ack_timeout=ack_timeout)
    started = time.monotonic()
    summary = producer.put(camera.packets,
                           VideoFormat("h264", camera.codec_private, 160, 120, 25),
                           realtime=True, on_ack=on_ack, on_retry=on_retry)
    elapsed = time.monotonic() - started
    time.sleep(max(0.0, marks["frozen"] + freeze_s + 4 - time.monotonic()))  # woken, logged
    log = [line.split(" ", 3)[-1] for line in frozen[0].output().splitlines()
           if "lease" in line]
    return {"ack_timeout_s": ack_timeout, "freeze_s": freeze_s,
            "given_up_after_s": round(marks["given_up"] - marks["frozen"], 2),
            "first_persisted_after_failover_s":
                round(marks["persisted_after"] - marks["frozen"], 2),
            "first_retry_reason": marks["reason"], "retries": summary.retries,
            "fragments": seconds, "persisted": summary.fragments_persisted,
            "distinct_fragment_numbers": len(set(summary.fragment_numbers)),
            "resent": summary.fragments_resent, "upload_s": round(elapsed, 1),
            "frozen_node_log": log}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--s3-outage-s", type=float, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--ack-timeout", type=float, default=5)
    parser.add_argument("--freeze-s", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvslite-outages-") as root:
        with LocalCluster(Path(root) / "cluster", nodes=2,
                          node_args=["--log-level", "info"]) as cluster:
            results = {"s3": s3_outage(cluster, args.s3_outage_s),
                       "frozen": frozen_node(cluster, args.seconds, args.ack_timeout,
                                             args.freeze_s)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
