"""PutMedia ingest benchmark: how fast kvslite makes fragments durable, next to the disk's floor.

What it measures (all traffic on 127.0.0.1, against a real `python -m kvslite serve`
subprocess with a temporary data dir):

  floor  The durability floor on the same filesystem, single-threaded: per fragment, write
         the cluster bytes to a new file + one fsync, then one SQLite row committed in WAL
         mode with synchronous=FULL (PERSISTED = blob fsync + committed row).
  A      One stream, unpaced: ~--mb MB of 1-s fragments sent back to back on one PutMedia
         connection. Throughput = body bytes / (first byte sent -> last PERSISTED ack).
  B      --streams concurrent streams, each paced like a camera (one 1-s fragment per second,
         starts staggered over one second) for --seconds.

Video: camera-like H.264 from libx264 (1280x720, 25 fps, 1-s closed GOPs, 2 B-frames,
CBR 2 Mbit/s, preset veryfast), 10 s encoded once, then reused with shifted absolute
timecodes. Each fragment is an unknown-size Cluster (as the KVS producer SDK sends it)
followed by an AWS_KINESISVIDEO_END_OF_FRAGMENT Tags element, so the server completes it on
its own last bytes; ack latency = PERSISTED ack received - sendall() of the fragment's last
byte returned. In A that includes queueing behind earlier fragments (the client runs ahead).
MB = 10^6 bytes.

  --signed-as  uploads signed by the admin key or an IAM user's (its policy checked):
         compare server CPU per fragment with the unsigned default.
  --cluster  B only, on one node of examples/local_cluster.py (PostgreSQL + SeaweedFS S3):
         adds how much of the run SeaweedFS spent growing volumes (its log's "grow" lines).
  --server-cpus  pin the server to these CPUs ("1", "0-3") and the load generator to the
         others: cameras per server core, without the load generator's share of the cores.

Rerun:  .venv/bin/python benchmarks/ingest.py [--seconds 20] [--streams 20] [--mb 200]
                                              [--cluster] [--signed-as nobody|admin|user]
                                              [--server-cpus 1]
                                              [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import boto3

from common import (FPS, H, W, X264, Server, encode_camera_gops, fragment, mkv_header,
                    paced_cameras, pct, upload_unpaced)


def floor_baseline(root: Path, frags: list[bytes], limit_s: float) -> dict:
    root.mkdir()
    db = sqlite3.connect(root / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE f (id INTEGER PRIMARY KEY, name TEXT, size INT, meta BLOB)")
    lat, total, t0 = [], 0, time.perf_counter()
    for k, data in enumerate(frags):
        t = time.perf_counter()
        with open(root / f"{k}.mkv", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO f (name, size, meta) VALUES (?, ?, ?)",
                   (f"{k}.mkv", len(data), b"\0" * 350))  # kvslite's frame index: 25 x 14 B
        db.execute("COMMIT")
        lat.append(time.perf_counter() - t)
        total += len(data)
        if t - t0 > limit_s:
            break
    elapsed = time.perf_counter() - t0
    db.close()
    return {"fragments": len(lat), "bytes": total, "seconds": round(elapsed, 2),
            "mb_per_s": round(total / elapsed / 1e6, 2), "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99)}


def cluster_run(args, header: bytes, gops) -> dict:
    """Scenario B against one node of a LocalCluster: PostgreSQL metadata, SeaweedFS media."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from local_cluster import LocalCluster

    from common import process_cpu_s
    with LocalCluster(nodes=1, node_args=["--log-level", "warning"]) as cluster:
        node = cluster.nodes[0]
        kvs = node.client("kinesisvideo")
        names = [f"bench-b-{i}" for i in range(args.streams)]
        for name in names:
            kvs.create_stream(StreamName=name, DataRetentionInHours=24, MediaType="video/h264")
        cpu0 = process_cpu_s(node.proc.pid)
        b = paced_cameras(node.port, names, header, gops, args.seconds)
        b["server_cpu_s"] = round(process_cpu_s(node.proc.pid) - cpu0, 1)
        b["server_cpu_ms_per_fragment"] = cpu_per_fragment(b)
        weed_log = cluster.seaweed.log_path.read_text(errors="replace")
    return {"B_concurrent_paced": b, "seaweed": volume_growth(weed_log)}


ADMIN_KEY = ("AKIDBENCH", "bench-secret")


def user_key(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed PutMedia on the bench streams only, and its access key."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id=ADMIN_KEY[0], aws_secret_access_key=ADMIN_KEY[1])
    iam.create_user(UserName="bench-camera")
    iam.put_user_policy(UserName="bench-camera", PolicyName="upload", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "kinesisvideo:PutMedia",
             "Resource": "arn:aws:kinesisvideo:*:*:stream/bench-*/*"}]}))
    made = iam.create_access_key(UserName="bench-camera")["AccessKey"]
    return made["AccessKeyId"], made["SecretAccessKey"]


def pin_apart(server: Server, cpus: str) -> None:
    """The server on `cpus`, this process (the load generator) on every other CPU."""
    server.pin(cpus)
    mine = set(os.sched_getaffinity(0)) - set(os.sched_getaffinity(server.proc.pid))
    if not mine:
        raise SystemExit(f"--server-cpus {cpus} leaves no CPU for the load generator")
    os.sched_setaffinity(0, mine)


def cpu_per_fragment(b: dict) -> float | None:
    return round(b["server_cpu_s"] * 1000 / b["fragments_persisted"], 2) \
        if b["fragments_persisted"] else None


def volume_growth(log: str) -> dict:
    """How often, and for how long, SeaweedFS grew a volume (its master's glog lines: a
    "volume grow" request until the volume is "Registered"); the ms of each growth."""
    times, started = [], None
    for line in log.splitlines():
        stamp = re.match(r"I\d{4} (\d\d):(\d\d):(\d\d\.\d+)", line)
        if not stamp:
            continue
        h, m, sec = stamp.groups()
        t = int(h) * 3600 + int(m) * 60 + float(sec)
        if "volume grow" in line:
            started = t
        elif "Registered Volume" in line and started is not None:
            times.append(round((t - started) * 1000, 1))
            started = None
    return {"volumes_grown": len(times), "grow_ms": times, "grow_ms_total": round(sum(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="scenario B duration")
    ap.add_argument("--streams", type=int, default=20, help="scenario B concurrent streams")
    ap.add_argument("--mb", type=float, default=200, help="scenario A upload size (MB)")
    ap.add_argument("--cluster", action="store_true",
                    help="scenario B only, on PostgreSQL + SeaweedFS (examples/local_cluster.py)")
    ap.add_argument("--signed-as", choices=["nobody", "admin", "user"], default="nobody",
                    help="uploads unsigned to an anonymous server (default), or SigV4-signed by "
                         "the administrator's key or by an IAM user's whose policy allows "
                         "PutMedia on the bench streams (the authorization check's cost)")
    ap.add_argument("--server-cpus", default=None,
                    help="pin the server to these CPUs (taskset list, e.g. 1 or 0-3) and this "
                         "load generator to the rest")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "kvslite-ingest.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    avcc, gops = encode_camera_gops()
    header = mkv_header(avcc)
    frag_size = sum(len(fragment(g, 0)) for g in gops) / len(gops)
    n_a = max(1, int(args.mb * 1e6 / frag_size))
    print(f"encoded {len(gops)} GOPs, {frag_size / 1e3:.0f} kB/fragment "
          f"({frag_size * 8 / 1e6:.2f} Mbit/s); scenario A: {n_a} fragments", flush=True)
    if args.cluster:
        result = cluster_run(args, header, gops)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["B_concurrent_paced"] | {"seaweed": result["seaweed"]},
                         indent=1, default=str)[:3000])
        return
    root = Path(tempfile.mkdtemp(prefix="kvslite-bench-"))  # floor and server: same filesystem
    try:
        floor = floor_baseline(root / "floor", [fragment(gops[k % len(gops)], k * 1000)
                                                for k in range(n_a)], limit_s=120)
        admin = None if args.signed_as == "nobody" else ADMIN_KEY
        with Server(root, "--log-level", "warning",
                    *(("--access-key-id", ADMIN_KEY[0], "--secret-access-key", ADMIN_KEY[1])
                      if admin else ())) as server:
            endpoint = f"http://127.0.0.1:{server.port}"
            kvs = boto3.client("kinesisvideo", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id=ADMIN_KEY[0], aws_secret_access_key=ADMIN_KEY[1])
            for name in ["bench-a"] + [f"bench-b-{i}" for i in range(args.streams)]:
                kvs.create_stream(StreamName=name, DataRetentionInHours=24, MediaType="video/h264")
            key = user_key(endpoint) if args.signed_as == "user" else admin
            if args.server_cpus:
                pin_apart(server, args.server_cpus)
            cpu0 = server.cpu_s()
            a = upload_unpaced(server.port, "bench-a", header, gops, n_a, limit_s=300, key=key)
            cpu1 = server.cpu_s()
            b = paced_cameras(server.port, [f"bench-b-{i}" for i in range(args.streams)],
                              header, gops, args.seconds, key=key)
            for r, cpu_s in ((a, cpu1 - cpu0), (b, server.cpu_s() - cpu1)):
                r["server_cpu_s"] = round(cpu_s, 2)
                # the figure to compare: server CPU per fragment persisted
                r["server_cpu_ms_per_fragment"] = cpu_per_fragment(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "signed_as": args.signed_as, "server_cpus": args.server_cpus or "all (shared)",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "processor": platform.processor()},
        "video": {"width": W, "height": H, "fps": FPS, "fragment_bytes_avg": round(frag_size),
                  "x264_params": X264},
        "floor": floor, "A_one_stream_unpaced": a, "B_concurrent_paced": b,
        "A_ratio_to_floor": round(a["mb_per_s"] / floor["mb_per_s"], 3),
        "server_exit_code": server.proc.returncode, "server_log_warnings": server.problems[:50],
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }
    print(f"\n{'':28}{'MB/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'frags':>7}{'errors':>7}"
          f"{'CPU ms/frag':>12}")
    print(f"{'floor (fsync+SQLite FULL)':28}{floor['mb_per_s']:>8}{floor['p50_ms']:>9}"
          f"{floor['p99_ms']:>9}{'':>9}{floor['fragments']:>7}{'':>7}")
    for label, r in (("A: 1 stream, unpaced", a), (f"B: {args.streams} streams, paced", b)):
        print(f"{label:28}{r['mb_per_s']:>8}{r['ack_p50_ms']!s:>9}{r['ack_p99_ms']!s:>9}"
              f"{r['ack_max_ms']!s:>9}{r['fragments_persisted']:>7}{len(r['errors']):>7}"
              f"{r['server_cpu_ms_per_fragment']!s:>12}")
    print(f"\nA / floor = {result['A_ratio_to_floor']}   B max send lag {b['max_send_lag_ms']} ms"
          f"   server log warnings: {len(server.problems)}   runtime {result['total_runtime_s']} s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
