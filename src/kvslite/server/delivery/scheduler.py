"""When deliveries run, and what a failure costs: nothing one destination does holds the
others up.

A destination is one stream's image generation, or its notifications. The outbox hands out
work fairly (MetadataStore.claim_deliveries): a destination has at most one delivery in
flight, it is parked while a failed delivery waits out its backoff (1 s doubling to 5
minutes), and work never attempted goes before retries. Claimed deliveries run on WORKERS
threads, so one blocked until its deadline (well inside CLAIM_MS) never stops the others.

A delivery is dropped, logged with its stream, fragment, kind and reason, and counted
(result "failed") when it fails permanently (DeliveryError(permanent=True): the bucket does
not exist, access is denied) or has failed `max_attempts` times: 10 by default, about 8.5
minutes of backoff, enough to ride out a receiver's restart without holding events for hours
(AWS gives up too).
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import abstractmethod

from kvslite.server import metrics
from kvslite.server.archive.background import BackgroundWorker
from kvslite.server.delivery.failures import DeliveryError
from kvslite.server.store.metadata import Delivery, MetadataStore

log = logging.getLogger("kvslite.delivery")

CLAIM_MS = 15_000  # a claimed delivery must be done by then, or it is due again
WORKERS = 8  # deliveries in flight on this node
MAX_BACKOFF_MS = 300_000
DEFAULT_MAX_ATTEMPTS = 10


def backoff_ms(attempts: int) -> int:
    """1 s, 2 s, 4 s ... up to 5 minutes."""
    return min(MAX_BACKOFF_MS, 1000 * 2 ** min(attempts, 20))


def stream_name(arn: str) -> str:
    """The name in arn:aws:kinesisvideo:REGION:ACCOUNT:stream/NAME/CREATION."""
    return arn.split(":stream/", 1)[-1].rsplit("/", 1)[0]


class DeliveryScheduler(BackgroundWorker):
    """Claims due deliveries while a worker is free and runs `deliver` on them."""

    name = "kvslite-delivery"

    def __init__(self, store: MetadataStore, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 interval_s: float = 1.0):
        super().__init__(interval_s)  # wake(): new work in the outbox, or a worker free
        self.store = store
        self.max_attempts = max_attempts
        self._work: queue.Queue[Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight: set[tuple[str, str]] = set()  # destinations being delivered to

    @abstractmethod
    def deliver(self, delivery: Delivery) -> str:
        """Do it; the result to count ("delivered", or "dropped": nothing left to do).
        Raises on failure (DeliveryError says whether it is permanent). Deliverer does
        the work; the scheduler decides when."""

    def start(self) -> None:
        for index in range(WORKERS):  # daemons: a delivery stuck at exit is redone later
            threading.Thread(target=self._worker, name=f"{self.name}-{index}",
                             daemon=True).start()
        super().start()

    def stop(self) -> None:
        super().stop()
        for _ in range(WORKERS):
            self._work.put(None)

    def run_pass(self) -> bool:
        """Claim as many deliveries as workers are free; True if that filled them."""
        with self._lock:
            free = WORKERS - len(self._in_flight)
        if free <= 0:
            return False  # a worker that finishes wakes the next pass
        claimed = self.store.claim_deliveries(free, CLAIM_MS)
        for delivery in claimed:
            with self._lock:
                if (delivery.arn, delivery.kind) in self._in_flight:
                    continue  # the one before outlived its claim: this claim lapses unused
                self._in_flight.add((delivery.arn, delivery.kind))
            self._work.put(delivery)
        return len(claimed) == free

    def _worker(self) -> None:
        while (delivery := self._work.get()) is not None:
            try:
                self._attempt(delivery)
            except Exception:  # the store failed: the claim lapses and the work is redone
                log.exception("delivery %d could not be recorded", delivery.id)
            finally:
                with self._lock:
                    self._in_flight.discard((delivery.arn, delivery.kind))
                self.wake()

    def _attempt(self, delivery: Delivery) -> None:
        try:
            result = self.deliver(delivery)
        except Exception as e:  # noqa: BLE001 - every failure is retried or dropped
            self._failed(delivery, e)
            return
        self.store.finish_delivery(delivery.id)
        metrics.DELIVERIES.labels(delivery.kind, result).inc()

    def _failed(self, delivery: Delivery, error: Exception) -> None:
        reason = error.reason if isinstance(error, DeliveryError) else \
            f"{type(error).__name__}: {error}"
        # the stream is part of the message, so the log's repeat filter (which compares
        # messages) quiets one stream's run of failures, never another stream's
        what = f"{delivery.kind} for stream {stream_name(delivery.arn)}".replace("%", "%%")
        attempt = delivery.attempts + 1
        permanent = isinstance(error, DeliveryError) and error.permanent
        if permanent or attempt >= self.max_attempts:
            log.warning(what + ", fragment %s failed %s; dropped: %s", delivery.fragment_number,
                        "permanently" if permanent else f"{attempt} times", reason)
            self.store.finish_delivery(delivery.id)
            metrics.DELIVERIES.labels(delivery.kind, "failed").inc()
            return
        delay = backoff_ms(delivery.attempts)
        log.warning(what + ", fragment %s failed (attempt %d of %d), retrying in %d s: %s",
                    delivery.fragment_number, attempt, self.max_attempts, delay // 1000, reason)
        self.store.retry_delivery(delivery.id, delay, reason)
        metrics.DELIVERIES.labels(delivery.kind, "retried").inc()
