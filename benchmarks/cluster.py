"""Cluster benchmark: a kvslite cluster next to the embedded default, both started in this run.

  embedded  one `kvslite serve` with the defaults: SQLite + files in a temporary data dir.
  cluster   examples/local_cluster.py's LocalCluster: PostgreSQL (metadata), SeaweedFS (S3
            media), --nodes kvslite nodes sharing both, HAProxy round-robin in front; every
            request below goes through the load balancer.

Both get `--min-sampling-interval-ms 100 --image-cache-mb 0 --log-level warning` (no cache,
so every GetImages run renders its images), run one after the other, and are measured the
same way (all traffic on 127.0.0.1):

  ingest     --streams camera-like streams paced in real time for --seconds, as ingest.py's
             scenario B (1280x720 25 fps H.264 at 2 Mbit/s, 1-s fragments, raw-socket PutMedia):
             aggregate MB/s, PERSISTED ack latency p50/p99 from a fragment's last byte sent to
             its PERSISTED ack, ERROR acks (must be 0).
  archive    one more stream, --archive-seconds of the same video sent unpaced on one PutMedia
             (MB/s from first byte to last PERSISTED ack, as ingest.py's scenario A).
  GetImages  boto3 GetImages on the archive stream over its whole span every 1 s (full-size
             JPEG, quality 80, pages of 100), fastest of --repeat runs; every run must return one
             image per second of video, each with ImageContent. Twice: starting 0.5 s in, so
             each sample decodes half a GOP (typical), and on the keyframes, where decoding is
             one frame and fetching the fragment's bytes weighs most.

Also per phase: CPU seconds of the kvslite processes (the server, or all nodes) and how busy
the whole machine was (every engine and this client included). Ratios are cluster / embedded.

Rerun:  .venv/bin/python benchmarks/cluster.py [--nodes 2] [--seconds 20] [--streams 20]
                                               [--archive-seconds 120] [--repeat 2]
                                               [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common import (PROBLEM_WORDS, Server, encode_camera_gops, fragment, mkv_header,
                    paced_cameras, process_cpu_s, upload_unpaced)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# no rendered-image cache: with it, every GetImages run after the first is served from memory
SERVE_ARGS = ["--min-sampling-interval-ms", "100", "--image-cache-mb", "0",
              "--log-level", "warning"]
ARCHIVE = "archive"
# How far into each 1-s fragment GetImages samples: half a second is typical (a caller's clock
# seldom lines up with a camera's keyframes: each image decodes half a GOP); on the keyframes,
# decoding is one frame, so what fetching the fragment's bytes costs shows most
GETIMAGES_OFFSET_MS = {"getimages": 500, "getimages_keyframes": 0}


@dataclass
class Deployment:
    """What the measurements need of either deployment: where PutMedia and boto3 connect,
    and which processes are kvslite."""

    name: str
    port: int
    client: Callable[[str], Any]
    kvslite_pids: list[int]


def machine_busy() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def timed_phase(deployment: Deployment, run: Callable[[], dict]) -> dict:
    """run(), plus the kvslite CPU seconds it cost and the machine's busy share meanwhile."""
    cpu0, (busy0, total0) = sum(map(process_cpu_s, deployment.kvslite_pids)), machine_busy()
    result = run()
    busy1, total1 = machine_busy()
    result["kvslite_cpu_s"] = round(sum(map(process_cpu_s, deployment.kvslite_pids)) - cpu0, 1)
    result["machine_busy_pct"] = round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)
    return result


def get_images(client, start_ms: int, end_ms: int) -> dict:
    """GetImages every 1 s over [start_ms, end_ms], all pages."""
    params = dict(StreamName=ARCHIVE, ImageSelectorType="PRODUCER_TIMESTAMP",
                  StartTimestamp=start_ms / 1000, EndTimestamp=end_ms / 1000,
                  SamplingInterval=1000, Format="JPEG", FormatConfig={"JPEGQuality": "80"},
                  MaxResults=100)
    images, t0 = [], time.perf_counter()
    while True:
        page = client.get_images(**params)
        images += page["Images"]
        if not page.get("NextToken"):
            break
        params["NextToken"] = page["NextToken"]
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "images": len(images),
            "images_per_s": round(len(images) / seconds, 1),
            "with_content": sum(bool(i.get("ImageContent")) for i in images),
            "errors": dict(Counter(i["Error"] for i in images if i.get("Error")))}


def best_get_images(deployment: Deployment, client, phase: str, start_ms: int, end_ms: int,
                    expected: int, repeat: int) -> dict:
    """The fastest of `repeat` runs; all_ok: every run gave `expected` images with content."""
    runs = []
    for rep in range(repeat):
        runs.append(timed_phase(deployment, lambda: get_images(client, start_ms, end_ms)))
        print(f"[{deployment.name}] {phase} run {rep + 1}/{repeat}: {runs[-1]}", flush=True)
    return {**min(runs, key=lambda r: r["seconds"]), "all_seconds": [r["seconds"] for r in runs],
            "expected": expected,
            "all_ok": all(r["images"] == r["with_content"] == expected for r in runs)}


def measure(deployment: Deployment, args, header: bytes, gops) -> dict:
    def say(text: str) -> None:
        print(f"[{deployment.name}] {text}", flush=True)

    cameras = [f"camera-{i}" for i in range(args.streams)]
    kvs = deployment.client("kinesisvideo")
    for name in cameras + [ARCHIVE]:
        kvs.create_stream(StreamName=name, DataRetentionInHours=24, MediaType="video/h264")
    say(f"ingest: {args.streams} streams paced for {args.seconds} s")
    ingest = timed_phase(deployment, lambda: paced_cameras(deployment.port, cameras, header,
                                                           gops, args.seconds))
    say(f"  {ingest['mb_per_s']} MB/s, {ingest['fragments_persisted']} fragments, ack p50 "
        f"{ingest['ack_p50_ms']} ms p99 {ingest['ack_p99_ms']} ms, errors {len(ingest['errors'])}")
    say(f"archive: {args.archive_seconds} s of video unpaced on one PutMedia")
    archive = timed_phase(deployment, lambda: upload_unpaced(
        deployment.port, ARCHIVE, header, gops, args.archive_seconds, limit_s=120))
    say(f"  {archive['mb_per_s']} MB/s, {archive['fragments_persisted']} fragments")
    client = deployment.client("kinesis-video-archived-media")
    start, end = archive["first_timecode_ms"], archive["end_timecode_ms"] - 1
    expected = archive["fragments_persisted"]  # one image per second of video
    images = {phase: best_get_images(deployment, client, phase, start + offset, end, expected,
                                     args.repeat)
              for phase, offset in GETIMAGES_OFFSET_MS.items()}
    return {"ingest": ingest, "archive": archive, **images, "loadavg_after": load_average()}


def run_embedded(args, header: bytes, gops, root: Path) -> dict:
    t0 = time.perf_counter()
    with Server(root, *SERVE_ARGS) as server:
        startup = round(time.perf_counter() - t0, 1)
        deployment = Deployment("embedded", server.port,
                                server.client, [server.proc.pid])
        result = measure(deployment, args, header, gops)
    return {**result, "startup_s": startup, "problems": server.problems[:50]}


def run_cluster(args, header: bytes, gops) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    from local_cluster import LocalCluster

    t0 = time.perf_counter()
    print(f"[cluster] starting PostgreSQL, SeaweedFS, {args.nodes} nodes, HAProxy", flush=True)
    with LocalCluster(nodes=args.nodes, node_args=SERVE_ARGS) as cluster:
        startup = round(time.perf_counter() - t0, 1)
        deployment = Deployment("cluster", cluster.port,
                                lambda service: cluster.client(service, read_timeout=300),
                                [node.proc.pid for node in cluster.nodes])
        result = measure(deployment, args, header, gops)
        problems = [line for node in cluster.nodes for line in
                    node.output(tail=1 << 20).splitlines()
                    if any(word in line for word in PROBLEM_WORDS)]
        requests = {name: int(row["stot"]) for name, row in cluster.haproxy.stats().items()}
    return {**result, "startup_s": startup, "problems": problems[:50],
            "haproxy_requests_per_node": requests}


def ratio(cluster: float | None, embedded: float | None) -> float | None:
    return round(cluster / embedded, 2) if cluster and embedded else None


def cell(result: dict, phase: str, key: str):
    value = result[phase][key]
    return len(value) if key == "errors" else value


def print_table(e: dict, c: dict, args) -> dict:
    """Both deployments side by side; returns the ratios cluster / embedded it shows."""
    rows = [  # label, phase, key, whether a ratio is shown
        (f"ingest MB/s ({args.streams} streams paced)", "ingest", "mb_per_s", True),
        ("  fragments persisted", "ingest", "fragments_persisted", False),
        ("  PERSISTED ack p50 ms", "ingest", "ack_p50_ms", False),
        ("  PERSISTED ack p99 ms", "ingest", "ack_p99_ms", True),
        ("  PERSISTED ack max ms", "ingest", "ack_max_ms", False),
        ("  ERROR acks", "ingest", "errors", False),
        ("  kvslite CPU s", "ingest", "kvslite_cpu_s", False),
        ("  machine busy %", "ingest", "machine_busy_pct", False),
        (f"archive MB/s ({args.archive_seconds} s unpaced)", "archive", "mb_per_s", True),
        (f"GetImages s (every 1 s, best of {args.repeat})", "getimages", "seconds", True),
        ("  images/s", "getimages", "images_per_s", False),
        ("  images with content", "getimages", "with_content", False),
        ("  machine busy %", "getimages", "machine_busy_pct", False),
        ("GetImages s, samples on keyframes", "getimages_keyframes", "seconds", True),
        ("  images/s", "getimages_keyframes", "images_per_s", False),
    ]
    ratios = {}
    print(f"\n{'':38}{'embedded':>10}{'cluster':>10}{'cluster/embedded':>18}")
    for label, phase, key, with_ratio in rows:
        embedded, cluster = (cell(r, phase, key) for r in (e, c))
        if with_ratio:
            ratios[f"{phase}_{key}"] = ratio(cluster, embedded)
        print(f"{label:38}{embedded!s:>10}{cluster!s:>10}"
              f"{ratios[f'{phase}_{key}'] if with_ratio else ''!s:>18}")
    return ratios


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(load_before) -> dict:
    cpu = [x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")]
    return {"cpu_count": os.cpu_count(), "cpu": cpu[0] if cpu else platform.processor(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": load_before, "loadavg_after": load_average()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=2, help="kvslite nodes in the cluster")
    ap.add_argument("--seconds", type=int, default=20, help="paced ingest duration")
    ap.add_argument("--streams", type=int, default=20, help="paced camera streams")
    ap.add_argument("--archive-seconds", type=int, default=120, help="video for GetImages")
    ap.add_argument("--repeat", type=int, default=2, help="GetImages runs; the fastest counts")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "kvslite-cluster.json"))
    args = ap.parse_args()
    started, load_before = time.perf_counter(), load_average()
    avcc, gops = encode_camera_gops()
    header = mkv_header(avcc)
    frag_kb = sum(len(fragment(g, 0)) for g in gops) / len(gops) / 1e3
    print(f"encoded {len(gops)} GOPs of camera-like 720p, {frag_kb:.0f} kB/fragment; "
          f"load average {load_before}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="kvslite-cluster-bench-"))
    try:
        embedded = run_embedded(args, header, gops, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cluster = run_cluster(args, header, gops)
    ratios = print_table(embedded, cluster, args)
    result = {"machine": machine_info(load_before), "nodes": args.nodes,
              "serve_args": SERVE_ARGS, "fragment_kb_avg": round(frag_kb, 1),
              "embedded": embedded, "cluster": cluster, "ratios_cluster_over_embedded": ratios,
              "total_runtime_s": round(time.perf_counter() - started, 1)}
    m = result["machine"]
    print(f"\n{m['cpu_count']} cores ({m['cpu']}), load average before {m['loadavg_before']} "
          f"after {m['loadavg_after']}; cluster start-up {cluster['startup_s']} s")
    checks = {name: all(r[phase]["all_ok"] for phase in GETIMAGES_OFFSET_MS)
              for name, r in (("embedded", embedded), ("cluster", cluster))}
    print(f"every GetImages run gave one image per second, all with ImageContent: {checks}; "
          f"server log problems: embedded {len(embedded['problems'])}, cluster "
          f"{len(cluster['problems'])}; runtime {result['total_runtime_s']} s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
