"""Signaling benchmark, embedded or on a 2-node cluster: latency of a viewer's offer to the
master's receipt, and the server's memory per idle WebSocket.

Starts one `kvslite serve` (SQLite + files, no credentials: signing costs the client, not
the relay), creates --channels signaling channels (CreateSignalingChannel over boto3), then
connects one master and --viewers viewers to each with the `websockets` client, all on
127.0.0.1. Every viewer sends --offers SDP_OFFERs, --interval-s apart, each payload carrying
its send time; latency = the master's receipt minus that time (one clock, one machine).
Reports p50/p99/max in ms and the count received (must be channels x viewers x offers).

Memory: the server's RSS (VmRSS) with all sockets connected and idle, minus its RSS before
the first one connected, divided by the number of sockets.

--cluster: two nodes on one throwaway PostgreSQL (tests/postgres_server.py), every master
on node A and every viewer on node B, so each offer crosses nodes through the database;
memory is then both nodes' RSS growth over all sockets.

Rerun:  .venv/bin/python benchmarks/signaling.py [--channels 100] [--viewers 5]
                                                 [--offers 5] [--interval-s 0.5] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from common import Server, pct
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent


async def measure(servers: list[Server], arns: list[str], viewers: int, offers: int,
                  interval_s: float) -> dict:
    """Masters on the first server, viewers on the last (the same one, embedded)."""
    master_base, viewer_base = (f"ws://127.0.0.1:{s.port}/?X-Amz-ChannelARN="
                                for s in (servers[0], servers[-1]))
    rss_before = sum(s.mb("VmRSS") for s in servers)
    masters = [await connect(master_base + quote(arn, safe="")) for arn in arns]
    clients = [[await connect(viewer_base + quote(arn, safe="") + f"&X-Amz-ClientId=v{i}")
                for i in range(viewers)] for arn in arns]
    await asyncio.sleep(1)
    sockets = len(masters) + sum(map(len, clients))
    rss_idle = sum(s.mb("VmRSS") for s in servers)
    latencies: list[float] = []

    async def master_reads(master) -> None:
        for _ in range(viewers * offers):
            message = json.loads(await master.recv())
            sent = json.loads(base64.b64decode(message["messagePayload"]))["t"]
            latencies.append(time.time() - sent)

    async def viewer_sends(viewer) -> None:
        for _ in range(offers):
            payload = base64.b64encode(json.dumps({"type": "offer", "t": time.time(),
                                                   "sdp": "v=0" + "x" * 2000}).encode())
            await viewer.send(json.dumps({"action": "SDP_OFFER",
                                          "messagePayload": payload.decode()}))
            await asyncio.sleep(interval_s)

    await asyncio.gather(*(master_reads(m) for m in masters),
                         *(viewer_sends(v) for group in clients for v in group))
    for socket in masters + [v for group in clients for v in group]:
        await socket.close()
    return {"sockets": sockets, "received": len(latencies),
            "expected": len(arns) * viewers * offers,
            "latency_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99),
                           "max": pct(latencies, 100)},
            "rss_mb": {"before": rss_before, "idle_sockets": rss_idle},
            "kb_per_idle_socket": round((rss_idle - rss_before) * 1024 / sockets, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--viewers", type=int, default=5)
    parser.add_argument("--offers", type=int, default=5)
    parser.add_argument("--interval-s", type=float, default=0.5)
    parser.add_argument("--cluster", action="store_true",
                        help="two nodes on one PostgreSQL: masters on one, viewers on the other")
    args = parser.parse_args()
    if args.cluster:
        sys.path.insert(0, str(ROOT / "tests"))
        import postgres_server

        try:
            database = postgres_server.fresh_database()
            result = run(args, "--database-url", database, nodes=2)
        finally:
            postgres_server.stop()
    else:
        result = run(args)
    print(json.dumps({"cluster" if args.cluster else "embedded": result, "args": vars(args)},
                     indent=2))


def run(args, *server_args: str, nodes: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = []
        for i in range(nodes):
            (Path(tmp) / f"node{i}").mkdir()
            servers.append(stack.enter_context(Server(Path(tmp) / f"node{i}", *server_args,
                                                      "--log-level", "warning")))
        kvs = servers[0].client("kinesisvideo")
        arns = [kvs.create_signaling_channel(ChannelName=f"bench-{i}")["ChannelARN"]
                for i in range(args.channels)]
        result = asyncio.run(measure(servers, arns, args.viewers, args.offers,
                                     args.interval_s))
    result["problems"] = [p for s in servers for p in s.problems]
    return result


if __name__ == "__main__":
    main()
