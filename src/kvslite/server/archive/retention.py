"""Forgetting on schedule: the background sweeper.

A pass does, in this order:
- deletion: each stream marked DELETING loses its fragments, `batch` at a time (media,
  then rows: readers already see the stream as gone, and a crash between leaves rows the
  next pass deletes again), then whatever else is left in its media folder, then the
  stream row with its tags and headers. A pass after a crash carries on where the last
  one stopped.
- retention: each stream's fragments received longer ago than its DataRetentionInHours
  (on the server clock, as AWS measures it) go, `batch` at a time, the oldest first: rows,
  then media, so a reader never finds a row without media except in the moment between
  (and takes a vanished blob for a deleted fragment, FragmentGone).
- orphans: of the next `orphan_batch` keys of the media store (in its order, going on
  where the last pass stopped and from the start again after the last key), those no row
  refers to and written longer ago than a grace period are removed and reported: blobs
  whose row a crash kept from being committed, and leftovers of interrupted writes.
  Deletion and retention go on until nothing is left (or the pass must stop); the orphan
  collector checks one batch a pass, so it costs the same with a thousand blobs or millions.

Each batch is a short transaction, so ingest and reads never wait long. In a cluster a
pass runs under a cluster-wide lease, renewed between batches; a pass that loses it (a
stalled node) stops at the next batch, so two nodes never sweep at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kvslite.server import metrics
from kvslite.server.archive.background import BackgroundWorker
from kvslite.server.archive.leases import stream_lease_keys
from kvslite.server.store.blobs import BlobStore, stream_folder
from kvslite.server.store.metadata import Lease, MetadataStore, Stream

log = logging.getLogger("kvslite.retention")

HOUR_MS = 3_600_000
ORPHAN_BATCH = 1000  # media keys the orphan collector checks per pass
SWEEP_LEASE = "sweeper"


@dataclass
class SweepReport:
    expired: int = 0  # fragments past retention removed
    streams_deleted: int = 0  # DELETING streams finished
    orphans: list[str] = field(default_factory=list)  # blob keys no row referred to
    orphans_checked: int = 0  # media keys the orphan collector looked at


class Sweeper(BackgroundWorker):
    name = "kvslite-sweeper"

    def __init__(self, store: MetadataStore, blobs: BlobStore, *, interval_s: float,
                 orphan_grace_s: float, batch: int = 500, shared: bool = False,
                 orphan_batch: int = ORPHAN_BATCH, lease_ttl_s: float | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__(interval_s)  # wake(): sweep now, e.g. a stream was just deleted
        self.store = store
        # nodes sharing a database take turns: a pass runs under a cluster-wide lease, so two
        # nodes never do the same work and a dead node's turn passes on when its lease ends
        self.shared = shared
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4()}"
        self.lease_ttl_s = lease_ttl_s or max(60.0, 3 * interval_s)
        self._lease: Lease | None = None  # held during a shared pass
        self._renewed_at = 0.0  # time.monotonic() of the last grant or renewal
        self._lease_lost = False  # this pass's lease expired or was taken: stop
        self._lag_s = 0.0  # this pass: the furthest behind retention a stream was
        self.blobs = blobs
        self.orphan_grace_s = orphan_grace_s
        self.orphan_batch = orphan_batch
        self._orphan_cursor = ""  # the last media key checked; the next pass goes on after it
        self.batch = batch
        self.clock = clock

    def run_pass(self) -> bool:
        self.sweep()
        return False

    # -- one pass -----------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        if not self.shared:
            return self._sweep()
        lease = self.store.acquire_lease(SWEEP_LEASE, self.holder, limit=1,
                                         ttl_ms=int(self.lease_ttl_s * 1000))
        if lease is None:
            return SweepReport()  # another node is sweeping
        self._lease, self._renewed_at, self._lease_lost = lease, time.monotonic(), False
        try:
            return self._sweep()
        finally:
            self._lease = None
            self.store.release_lease(lease)

    def _keep_going(self) -> bool:
        """Whether the pass may do its next batch: not if the worker is stopping, nor, in a
        cluster, if the sweeping lease is lost (another node may be sweeping by now).
        Renews the lease once a third of it has gone by, so a batch has the rest to finish."""
        if self.stopping or self._lease_lost:
            return False
        if self._lease is None or time.monotonic() - self._renewed_at < self.lease_ttl_s / 3:
            return True
        try:
            renewed = self.store.renew_lease(self._lease, int(self.lease_ttl_s * 1000))
        except Exception:
            log.warning("could not renew the sweeping lease", exc_info=True)
            renewed = False
        if not renewed:
            log.warning("sweeping lease lost: stopping this pass; another node may sweep")
            self._lease_lost = True
            return False
        self._renewed_at = time.monotonic()
        return True

    def _sweep(self) -> SweepReport:
        report = SweepReport()
        self._lag_s = 0.0
        for stream in self.store.deleting_streams():
            if not self._keep_going():
                return report
            if self._guarded(self.finish_deletion, stream):
                report.streams_deleted += 1
        for stream in self._retained_streams():
            if not self._keep_going():
                return report
            report.expired += self._guarded(self.expire, stream) or 0
        if self._keep_going():
            report.orphans_checked, report.orphans = self._guarded(self.collect_orphans) \
                or (0, [])
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
        while self._keep_going():
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

    def finish_deletion(self, stream: Stream) -> bool:
        """Remove a DELETING stream's media and rows, batch by batch, then the stream; False
        if the pass had to stop first (the next carries on)."""
        while batch := self.store.list_fragments(stream.arn, limit=self.batch):
            if not self._keep_going():
                return False
            for fragment in batch:
                self.blobs.delete(fragment.blob_key)
            self.store.delete_fragments(stream.arn, [f.seq for f in batch])
        self.blobs.delete_prefix(stream_folder(stream))
        self.store.purge_stream(stream.arn, stream_lease_keys(stream.arn))
        log.info("stream %s (%s) deleted", stream.name, stream.arn)
        return True

    def collect_orphans(self) -> tuple[int, list[str]]:
        """Check the next `orphan_batch` media keys after the last pass's: remove those no
        fragment row refers to, once older than the grace period (so a blob whose row is
        about to be committed is never touched). After the last key, start over. Returns
        how many keys were checked and those removed."""
        page = self.blobs.list_after(self._orphan_cursor, self.orphan_batch)
        written_before = time.time() - self.orphan_grace_s  # the blob store's clock, not ours
        old = [key for key, written in page if written < written_before]
        referenced = self.store.referenced_blobs(old)
        removed = [key for key in old if key not in referenced]
        for key in removed:
            self.blobs.delete(key, prune=True)  # and its folder, if that is left empty
        if removed:
            log.info("removed %d orphan media files: %s", len(removed),
                     ", ".join(removed[:20]) + (" ..." if len(removed) > 20 else ""))
        # a short page was the end of the listing; a failed pass checks its page again
        self._orphan_cursor = page[-1][0] if len(page) == self.orphan_batch else ""
        return len(page), removed
