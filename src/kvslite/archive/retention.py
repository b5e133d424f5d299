"""Forgetting on schedule: the background sweeper.

Each pass, in bounded batches so ingest and reads never wait long:
- retention: fragments received longer ago than their stream's DataRetentionInHours
  (on the server clock, as AWS measures it) lose their row, then their media;
- deletion: streams marked DELETING lose their fragments, media and rows, then the
  stream row itself; a pass after a crash simply carries on where the last one stopped;
- orphans: media files no row refers to (a crash between writing a blob and committing
  its row), and temporary files, older than a grace period, are removed and reported.

Rows go before media, so a reader never finds a row without media except in the moment
between; readers treat a vanished blob as a deleted fragment (FragmentGone).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kvslite import metrics
from kvslite.archive.background import BackgroundWorker
from kvslite.archive.fragments import stream_dir
from kvslite.store.files import FileBlobStore, is_temp
from kvslite.store.metadata import MetadataStore, Stream

log = logging.getLogger("kvslite.retention")

HOUR_MS = 3_600_000


@dataclass
class SweepReport:
    expired: int = 0  # fragments past retention removed
    streams_deleted: int = 0  # DELETING streams finished
    orphans: list[str] = field(default_factory=list)  # blob keys no row referred to


class Sweeper(BackgroundWorker):
    name = "kvslite-sweeper"

    def __init__(self, store: MetadataStore, blobs: FileBlobStore, *, interval_s: float,
                 orphan_grace_s: float, batch: int = 500, shared: bool = False,
                 clock: Callable[[], float] = time.time):
        super().__init__(interval_s)  # wake(): sweep now, e.g. a stream was just deleted
        self.store = store
        # nodes sharing a database take turns: a pass runs under a cluster-wide lease, so two
        # nodes never do the same work and a dead node's turn passes on when its lease ends
        self.shared = shared
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4()}"
        self._lag_s = 0.0  # this pass: the furthest behind retention a stream was
        self.blobs = blobs
        self.orphan_grace_s = orphan_grace_s
        self.batch = batch
        self.clock = clock

    def run_pass(self) -> bool:
        self.sweep()
        return False

    # -- one pass -----------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        if not self.shared:
            return self._sweep()
        ttl_ms = int(max(60.0, 3 * self.interval_s) * 1000)
        lease = self.store.acquire_lease("sweeper", self.holder, limit=1, ttl_ms=ttl_ms)
        if lease is None:
            return SweepReport()  # another node is sweeping
        try:
            return self._sweep()
        finally:
            self.store.release_lease(lease)

    def _sweep(self) -> SweepReport:
        report = SweepReport()
        self._lag_s = 0.0
        for stream in self.store.deleting_streams():
            if self.stopping:
                return report
            if self._guarded(self.finish_deletion, stream):
                report.streams_deleted += 1
        for stream in self._retained_streams():
            if self.stopping:
                return report
            report.expired += self._guarded(self.expire, stream) or 0
        report.orphans = self._guarded(self.collect_orphans) or []
        metrics.SWEEPER_LAG.set(self._lag_s)
        if report.expired or report.streams_deleted or report.orphans:
            log.info("sweep: %d fragments past retention removed, %d deleted streams "
                     "finished, %d orphan files removed", report.expired,
                     report.streams_deleted, len(report.orphans))
        return report

    def _guarded(self, step, *args):
        """One stream's trouble (a file that cannot be removed, say) must not stop the
        sweep for every other stream: log it, go on, retry next pass."""
        try:
            result = step(*args)
        except Exception:
            log.exception("sweep failed: %s%s; retrying next pass", step.__name__,
                          f" of stream {args[0].name}" if args else "")
            return None
        return True if result is None else result

    def _retained_streams(self):
        after = ""
        while page := self.store.list_streams(prefix="", after=after, limit=self.batch):
            yield from (s for s in page if s.data_retention_hours > 0)
            after = page[-1].name

    def expire(self, stream: Stream) -> int:
        """Remove the stream's fragments older than its retention; returns how many."""
        cutoff_ms = int(self.clock() * 1000) - stream.data_retention_hours * HOUR_MS
        removed = 0
        while not self.stopping:
            batch = self.store.fragments_received_before(stream.arn, cutoff_ms, self.batch)
            if not batch:
                break
            if not removed:  # the oldest comes first: how far behind retention we are
                self._lag_s = max(self._lag_s, (cutoff_ms - batch[0].server_ms) / 1000)
            self.store.delete_fragments(stream.arn, [f.seq for f in batch])
            for fragment in batch:
                self.blobs.delete(fragment.blob_key)
            removed += len(batch)
        return removed

    def finish_deletion(self, stream: Stream) -> None:
        """Remove a DELETING stream's media and rows, batch by batch, then the stream."""
        while batch := self.store.list_fragments(stream.arn, limit=self.batch):
            for fragment in batch:
                self.blobs.delete(fragment.blob_key)
            self.store.delete_fragments(stream.arn, [f.seq for f in batch])
        self.blobs.delete_prefix(stream_dir(stream))
        self.store.purge_stream(stream.arn)
        log.info("stream %s (%s) deleted", stream.name, stream.arn)

    def collect_orphans(self) -> list[str]:
        """Remove media files no fragment row refers to, once older than the grace period
        (so a blob whose row is about to be committed is never touched)."""
        removed: list[str] = []
        candidates = list(self.blobs.keys_older_than(self.orphan_grace_s))
        for start in range(0, len(candidates), self.batch):
            keys = candidates[start:start + self.batch]
            referenced = self.store.referenced_blobs([k for k in keys if not is_temp(k)])
            for key in keys:
                if key not in referenced:
                    self.blobs.delete(key)
                    removed.append(key)
        if removed:
            self.blobs.remove_empty_dirs()
            log.info("removed %d orphan media files: %s", len(removed),
                     ", ".join(removed[:20]) + (" ..." if len(removed) > 20 else ""))
        return removed
