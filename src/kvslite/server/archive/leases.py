"""Per-stream connection limits as leases in the metadata store.

"One PutMedia per stream" and "at most 3 GetMedia per stream" are AWS's limits. They are
kept as leases (a holder and an expiry, renewed while the connection lives) rather than
counters in one process's memory, so they hold across processes and nodes, and a holder
that dies frees its slot within LEASE_TTL_MS. A PutMedia whose lease was lost can no
longer add fragments: the store checks the lease when it commits each one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from kvslite.server import metrics
from kvslite.server.store.metadata import Lease, MetadataStore, Stream

log = logging.getLogger("kvslite.leases")

LEASE_TTL_MS = 15_000  # a dead holder's slot is free again after at most this long
RENEW_EVERY_S = 3.0  # holders renew this often, well within the TTL

PUT_MEDIA = "put-media"
GET_MEDIA = "get-media"
LIMITS = {PUT_MEDIA: 1, GET_MEDIA: 3}


def lease_key(kind: str, stream_arn: str) -> str:
    """The resource a stream's leases of `kind` are held on."""
    return f"{kind}:{stream_arn}"


def stream_lease_keys(stream_arn: str) -> list[str]:
    """Every resource a stream's leases may be held on (removed with the stream)."""
    return [lease_key(kind, stream_arn) for kind in LIMITS]


class Leases:
    def __init__(self, store: MetadataStore):
        self.store = store
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self._unreleased: set[Lease] = set()  # releases the store could not write
        self._lock = threading.Lock()

    def acquire(self, kind: str, stream: Stream) -> Lease | None:
        """One of the stream's slots of this kind, or None if all are held."""
        return self.acquire_resource(lease_key(kind, stream.arn), limit=LIMITS[kind])

    def acquire_resource(self, resource: str, *, limit: int = 1) -> Lease | None:
        """One of `limit` slots on any resource (e.g. a channel's storage session host)."""
        self._retry_releases()
        return self.store.acquire_lease(resource, f"{self.node}:{uuid.uuid4()}",
                                        limit=limit, ttl_ms=LEASE_TTL_MS)

    def renew(self, lease: Lease) -> bool:
        metrics.LEASE_RENEWALS.inc()
        return self.store.renew_lease(lease, LEASE_TTL_MS)

    def why_lost(self, lease: Lease, unrenewed_s: float) -> str:
        """Why a renewal failed, for the log: what became of the lease, and whether
        another connection holds the slot now (when the store can say)."""
        if unrenewed_s * 1000 < LEASE_TTL_MS:  # not expired: removed (a deleted stream)
            return "this upload lost its lease on the stream: the lease was removed"
        reason = (f"this upload lost its lease on the stream: it expired, not renewed for "
                  f"{unrenewed_s:.0f} s (the node stalled or could not reach the database)")
        try:
            others = self.store.count_leases(lease.resource)
        except Exception:  # the store is what failed: say what is known
            return reason
        return reason + ("; another upload holds it now" if others
                         else "; no other upload holds it")

    def release(self, lease: Lease) -> None:
        """Free the slot. If the store cannot take the write (a full disk), the release is
        retried before the next acquire, so a reconnecting producer is not shut out until
        the lease expires."""
        try:
            self.store.release_lease(lease)
        except Exception:
            log.warning("could not release %s yet; retrying before the next connection",
                        lease.resource, exc_info=True)
            with self._lock:
                self._unreleased.add(lease)

    def _retry_releases(self) -> None:
        with self._lock:
            pending, self._unreleased = self._unreleased, set()
        for lease in pending:
            self.release(lease)
