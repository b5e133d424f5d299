"""Orphan collector benchmark: passes of the sweeper's orphan collector over --objects S3
objects on SeaweedFS, every one referenced by a fragment row in SQLite (the steady state:
every key is listed and checked, none is removed).

It starts SeaweedFS (tests/cluster_engines.py), writes the objects and the rows once,
then measures each kvslite checkout given (this one, and --baseline-src, e.g. an export of
main's src/) in a process of its own: a full cycle of passes untraced for the time of each
pass, then the cycle again under tracemalloc for each pass's peak Python memory. A
collector that lists everything does the whole cycle in one pass.

Rerun:  .venv/bin/python benchmarks/orphans.py [--objects 20000]
            [--baseline-src /tmp/main/src] [--out results.json]
(an export of main: mkdir /tmp/main && git archive main src | tar -x -C /tmp/main)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 10


def keys(count: int) -> list[str]:
    """Fragment-like blob keys over STREAMS streams, a fragment every 10 s."""
    base = 1_700_000_000_000
    return [f"streams/{1_700_000_000_000 + s}-camera-{s}/{base + 10_000 * i}-0a1b2c3d.mkv"
            for s in range(STREAMS) for i in range(count // STREAMS)]


def populate(s3, bucket: str, db: Path, count: int) -> None:
    from dataclasses import replace

    sys.path.insert(0, str(ROOT / "tests"))
    from store_contract_workers import digest_of, fragment_fields, make_stream

    from kvslite.server.store.sqlite import SqliteMetadataStore

    client = s3.client(max_pool_connections=32)
    client.create_bucket(Bucket=bucket)
    all_keys = keys(count)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=f"media/{k}",
                                                  Body=b"\x1f\x43\xb6\x75"), all_keys))
    store = SqliteMetadataStore(db)
    try:
        for s in range(STREAMS):
            stream = replace(make_stream(f"camera-{s}"), data_retention_hours=0)
            store.create_stream(stream, {})
            header_id = store.save_header(stream.arn, b"header")
            for ms, key in enumerate(all_keys[s::STREAMS]):
                store.add_fragment(**fragment_fields(stream.arn, header_id, ms,
                                                     digest_of(key), key))
    finally:
        store.close()


def measure(media_url: str, endpoint: str, db: str) -> dict:
    """One checkout's collector: a full cycle of passes timed, then again traced."""
    from kvslite.server.archive.retention import Sweeper
    from kvslite.server.store.s3 import S3BlobStore
    from kvslite.server.store.sqlite import SqliteMetadataStore

    store = SqliteMetadataStore(Path(db))
    sweeper = Sweeper(store, S3BlobStore(media_url, endpoint_url=endpoint), interval_s=60,
                      orphan_grace_s=0)

    def cycle(traced: bool) -> list[dict]:
        passes = []
        while True:
            if traced:
                tracemalloc.start()
            began = time.perf_counter()
            report = sweeper.sweep()
            took = time.perf_counter() - began
            peak = tracemalloc.get_traced_memory()[1] if traced else None
            tracemalloc.stop()
            checked = getattr(report, "orphans_checked", None)
            passes.append({"seconds": took, "peak_bytes": peak, "checked": checked,
                           "removed": len(report.orphans)})
            batch = getattr(sweeper, "orphan_batch", None)
            if checked is None or batch is None or checked < batch:
                return passes  # the listing wrapped (or the collector lists it all)

    try:
        timed, traced = cycle(False), cycle(True)
    finally:
        store.close()
    return {"passes": len(timed),
            "checked_per_pass": [p["checked"] for p in timed],
            "removed": sum(p["removed"] for p in timed),
            "pass_seconds_max": max(p["seconds"] for p in timed),
            "pass_seconds_mean": sum(p["seconds"] for p in timed) / len(timed),
            "cycle_seconds": sum(p["seconds"] for p in timed),
            "pass_peak_bytes_max": max(p["peak_bytes"] for p in traced)}


def run_checkout(src: Path, s3, media_url: str, db: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT / 'examples'}",
           "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, __file__, "--measure", media_url, s3.endpoint_url,
                          str(db)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "kvslite-orphans.json")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from cluster_engines import SeaweedServer

    with tempfile.TemporaryDirectory(prefix="kvslite-orphans-") as tmp:
        seaweed = SeaweedServer(Path(tmp) / "seaweed")
        s3 = seaweed.start()
        try:
            db = Path(tmp) / "kvslite.db"
            began = time.perf_counter()
            populate(s3, "media", db, args.objects)
            print(f"{args.objects} objects and rows written in "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
            checkouts = {"this": ROOT / "src"}
            if args.baseline_src:
                checkouts["baseline"] = args.baseline_src
            results = {name: run_checkout(src, s3, "s3://media/media", db)
                       for name, src in checkouts.items()}
        finally:
            seaweed.stop()
    print(f"{'checkout':10} {'passes':>6} {'pass s (max)':>12} {'cycle s':>8} "
          f"{'peak MB/pass':>12}")
    for name, r in results.items():
        print(f"{name:10} {r['passes']:6d} {r['pass_seconds_max']:12.3f} "
              f"{r['cycle_seconds']:8.2f} {r['pass_peak_bytes_max'] / 1e6:12.2f}")
    args.out.write_text(json.dumps({"objects": args.objects, "results": results,
                                    "machine": {"python": platform.python_version(),
                                                "cpus": os.cpu_count()}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
