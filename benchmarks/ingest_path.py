"""The ingest path without HTTP or threads: server CPU per fragment to parse and archive.

One IngestSession fed the ingest benchmark's camera fragments (259 kB, 25 frames) in 64 kB
chunks, on one thread, with the real SQLite store and blob files in a temporary folder: what
`take()` and `finish()` cost, the fsyncs and the commit included. The difference between this
and `ingest.py`'s server CPU per fragment is the HTTP layer, the hand-off to a worker thread
and the threads' contention. --profile prints cProfile's top functions instead.

Rerun:  PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/ingest_path.py [--fragments 300]
        [--profile]   (PYTHONPATH=<other checkout>/src:benchmarks measures another version)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from common import encode_camera_gops, fragment, mkv_header

from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.archive.fragments import Archive
from kvslite.server.archive.ingest import IngestSession
from kvslite.server.archive.leases import PUT_MEDIA, Leases
from kvslite.server.store.files import FileBlobStore
from kvslite.server.store.sqlite import SqliteMetadataStore

CHUNK = 64 * 1024
WARM_UP = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fragments", type=int, default=300)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    avcc, gops = encode_camera_gops()
    start = int(time.time() * 1000) - (args.fragments + WARM_UP + 10) * 1000
    fragments = [fragment(gops[k % len(gops)], start + k * 1000)
                 for k in range(args.fragments + WARM_UP)]
    root = Path(tempfile.mkdtemp(prefix="kvslite-ingest-path-"))
    store = SqliteMetadataStore(root / "kvslite.db")
    try:
        control = ControlPlane(store, region="us-east-1", account_id="123456789012")
        stream = control.create("bench", retention_hours=24, media_type="video/h264")
        session = IngestSession(Archive(store, FileBlobStore(root / "media")), stream,
                                timecode_type="ABSOLUTE", producer_start_ms=None,
                                lease=Leases(store).acquire(PUT_MEDIA, stream),
                                fragment_deadline_ms=60_000)
        session.feed(mkv_header(avcc))

        def ingest(batch: list[bytes]) -> None:
            for data in batch:
                for at in range(0, len(data), CHUNK):
                    if session.take(data[at:at + CHUNK]):
                        session.finish()

        ingest(fragments[:WARM_UP])
        measured = fragments[WARM_UP:]
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(ingest, measured)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ingest(measured)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        print(f"{len(measured)} fragments: {cpu * 1000 / len(measured):.3f} ms CPU and "
              f"{wall * 1000 / len(measured):.3f} ms wall per fragment; "
              f"{session.persisted} persisted")
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
