"""Signaling benchmark: latency of a viewer's SDP_OFFER to the master's receipt, on one
server and across a 2-node cluster, and the server's memory per idle WebSocket.

Each mode creates --channels signaling channels (CreateSignalingChannel over boto3), then
connects one master and --viewers viewers to each with the `websockets` client, all on
127.0.0.1. Every viewer sends --offers SDP_OFFERs (2 KB), --interval-s apart, each payload
carrying its send time; latency = the master's receipt minus that time (one clock, one
machine). Reports p50/p99/max in ms, the count received (must be channels x viewers x
offers; a master stops waiting --interval-s x --offers + 10 s after the first send), and the
time each WebSocket took to connect (upgrade included).

  embedded  one `kvslite serve` on SQLite + files, no credentials. Also the memory: the
            server's RSS (VmRSS) with every socket connected and idle, minus its RSS
            before the first connected, per socket.
  sigv4     the same, with --access-key-id/--secret-access-key: every WebSocket URL is
            presigned as the JS SDK presigns it, and the server checks the signature
            before upgrading (that check is in the connect time).
  cluster   examples/local_cluster.py's LocalCluster with 2 nodes on PostgreSQL: masters
            connect to node 0 and viewers to node 1 directly (not through HAProxy), so
            every offer crosses nodes through PostgreSQL (signaling/cluster.py).

Rerun:  .venv/bin/python benchmarks/signaling.py [--modes embedded,sigv4,cluster]
            [--channels 100] [--viewers 5] [--offers 5] [--interval-s 0.5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import boto3
from common import Server, pct
from websockets.asyncio.client import connect

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KEY, SECRET, REGION = "AKIDBENCH", "bench-secret", "us-east-1"
SIGNED = ("--access-key-id", KEY, "--secret-access-key", SECRET)
MODES = ("embedded", "sigv4", "cluster")


def presign(base: str, params: dict[str, str]) -> str:
    """`base?params` presigned like the JS SDK's SigV4RequestSigner (WEBRTC-NOTES §4.1)."""
    now = dt.datetime.now(dt.UTC)
    date, stamp = now.strftime("%Y%m%d"), now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{date}/{REGION}/kinesisvideo/aws4_request"
    query = {**params, "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
             "X-Amz-Credential": f"{KEY}/{scope}", "X-Amz-Date": stamp,
             "X-Amz-Expires": "299", "X-Amz-SignedHeaders": "host"}
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                               for k, v in sorted(query.items()))
    host = base.split("://", 1)[1]
    canonical = "\n".join(["GET", "/", canonical_query, f"host:{host}\n", "host",
                           hashlib.sha256(b"").hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{SECRET}".encode()
    for part in (date, REGION, "kinesisvideo", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{base}/?{canonical_query}&X-Amz-Signature={signature}"


def ws_url(base: str, params: dict[str, str], signed: bool) -> str:
    if signed:
        return presign(base, params)
    return f"{base}/?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


async def measure(master_base: str, viewer_base: str, arns: list[str], args, *,
                  signed: bool = False, server: Server | None = None) -> dict:
    """Connect, send, collect; the server's RSS per idle socket when `server` is given."""
    rss_before = server.mb("VmRSS") if server else None
    connect_s: list[float] = []

    async def open_socket(base: str, params: dict[str, str]):
        url = ws_url(base, params, signed)  # signed per socket: the SDKs sign each URL
        t0 = time.perf_counter()
        socket = await connect(url, open_timeout=30)
        connect_s.append(time.perf_counter() - t0)
        return socket

    masters = [await open_socket(master_base, {"X-Amz-ChannelARN": arn}) for arn in arns]
    clients = [[await open_socket(viewer_base, {"X-Amz-ChannelARN": arn,
                                                "X-Amz-ClientId": f"v{i}"})
                for i in range(args.viewers)] for arn in arns]
    await asyncio.sleep(1)
    sockets = len(masters) + sum(map(len, clients))
    rss_idle = server.mb("VmRSS") if server else None
    latencies: list[float] = []
    deadline = time.monotonic() + args.interval_s * args.offers + 10

    async def master_reads(master) -> None:
        for _ in range(args.viewers * args.offers):
            try:
                text = await asyncio.wait_for(master.recv(), deadline - time.monotonic())
            except TimeoutError:
                return  # what never arrived counts as missing in "received"
            sent = json.loads(base64.b64decode(json.loads(text)["messagePayload"]))["t"]
            latencies.append(time.time() - sent)

    async def viewer_sends(viewer) -> None:
        for _ in range(args.offers):
            payload = base64.b64encode(json.dumps({"type": "offer", "t": time.time(),
                                                   "sdp": "v=0" + "x" * 2000}).encode())
            await viewer.send(json.dumps({"action": "SDP_OFFER",
                                          "messagePayload": payload.decode()}))
            await asyncio.sleep(args.interval_s)

    await asyncio.gather(*(master_reads(m) for m in masters),
                         *(viewer_sends(v) for group in clients for v in group))
    for socket in masters + [v for group in clients for v in group]:
        await socket.close()
    result = {"sockets": sockets, "received": len(latencies),
              "expected": len(arns) * args.viewers * args.offers,
              "latency_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99),
                             "max": pct(latencies, 100)},
              "connect_ms": {"p50": pct(connect_s, 50), "p99": pct(connect_s, 99)}}
    if server:
        result["rss_mb"] = {"before": rss_before, "idle_sockets": rss_idle}
        result["kb_per_idle_socket"] = round((rss_idle - rss_before) * 1024 / sockets, 1)
    return result


def create_channels(kvs, count: int) -> list[str]:
    return [kvs.create_signaling_channel(ChannelName=f"bench-{i}")["ChannelARN"]
            for i in range(count)]


def run_embedded(args, signed: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp, \
            Server(Path(tmp), "--log-level", "warning", *(SIGNED if signed else ())) as server:
        # common.Server's client signs with keys this server would refuse
        kvs = signed_client(server.port) if signed else server.client("kinesisvideo")
        arns = create_channels(kvs, args.channels)
        base = f"ws://127.0.0.1:{server.port}"
        result = asyncio.run(measure(base, base, arns, args, signed=signed, server=server))
    result["problems"] = server.problems
    return result


def signed_client(port: int):
    return boto3.client("kinesisvideo", endpoint_url=f"http://127.0.0.1:{port}",
                        region_name=REGION, aws_access_key_id=KEY,
                        aws_secret_access_key=SECRET)


def run_cluster(args) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    from local_cluster import LocalCluster

    with LocalCluster(nodes=2, node_args=["--log-level", "warning"]) as cluster:
        arns = create_channels(cluster.client("kinesisvideo"), args.channels)
        master_node, viewer_node = cluster.nodes
        result = asyncio.run(measure(f"ws://127.0.0.1:{master_node.port}",
                                     f"ws://127.0.0.1:{viewer_node.port}", arns, args))
        result["problems"] = [line for node in cluster.nodes
                              for line in node.output(100_000).splitlines()
                              if "WARN" in line or "ERROR" in line or "Traceback" in line]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--viewers", type=int, default=5)
    parser.add_argument("--offers", type=int, default=5)
    parser.add_argument("--interval-s", type=float, default=0.5)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(),
                                                      "kvslite-signaling.json"))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    results: dict = {"args": vars(args)}
    for mode in modes:
        t0 = time.monotonic()
        if mode == "cluster":
            results[mode] = run_cluster(args)
        else:
            results[mode] = run_embedded(args, signed=mode == "sigv4")
        results[mode]["run_s"] = round(time.monotonic() - t0, 1)
        print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results, modes))
    print(f"\nJSON: {args.out}\nRerun: .venv/bin/python benchmarks/signaling.py "
          f"--modes {','.join(modes)} --channels {args.channels} --viewers {args.viewers} "
          f"--offers {args.offers} --interval-s {args.interval_s}")


def table(results: dict, modes: list[str]) -> str:
    lines = [(f"{'mode':<9} {'received':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
              f"{'connect p50/p99 ms':>19} {'KB/idle socket':>15}")]
    for mode in modes:
        r = results[mode]
        lat, con = r["latency_ms"], r["connect_ms"]
        lines.append(f"{mode:<9} {r['received']:>5}/{r['expected']:<5} {lat['p50']!s:>7} "
                     f"{lat['p99']!s:>7} {lat['max']!s:>7} "
                     f"{con['p50']!s:>9}/{con['p99']!s:<9} "
                     f"{r.get('kb_per_idle_socket', '-')!s:>15}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
