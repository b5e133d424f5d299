"""Group commit: requests that arrive together share one transaction and one commit.

Many cameras complete fragments at about the same time, and each fragment's row would pay
a commit of its own (an fsync on SQLite, a round trip and a WAL flush on PostgreSQL). With
`GroupCommit`, a caller that finds no batch running runs every request queued so far, its
own included, in one go; callers arriving meanwhile queue up and wait, and the next batch
takes them all. Nobody waits for a timer: an idle store commits a lone request at once.

The caller that runs a batch is one of the callers (no thread of its own to start or
stop). The batch function gives every request its own outcome, a result or an error, so
one bad request never fails the others. Every waiting caller is woken exactly once: when
its request is settled, or when it is its turn to run the next batch (a shared condition
would wake them all at each batch, and hundreds of cameras' threads would spend their CPU
on context switches).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Request = TypeVar("Request")


class Pending(Generic[Request]):
    """One queued request; the batch function sets its `result` or its `error`."""

    def __init__(self, request: Request):
        self.request = request
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.woken = threading.Event()  # settled, or its turn to run a batch

    def succeed(self, result: Any) -> None:
        self.result, self.done = result, True

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit(Generic[Request]):
    """Run requests in batches through `run_batch`, which must settle every Pending it is
    given (succeed or fail); one that it leaves unsettled fails with its exception."""

    def __init__(self, run_batch: Callable[[list[Pending[Request]]], None]):
        self._run_batch = run_batch
        self._lock = threading.Lock()
        self._queue: list[Pending[Request]] = []
        self._running = False
        self.batches = 0  # how many batches ran (tests and metrics read it)

    @property
    def queued(self) -> int:
        """Requests waiting for the next batch."""
        with self._lock:
            return len(self._queue)

    def submit(self, request: Request) -> Any:
        """Run `request` in the next batch: its result, or its error raised here."""
        pending = Pending(request)
        with self._lock:
            self._queue.append(pending)
            runs_next = not self._running
            self._running = True
        if not runs_next:
            pending.woken.wait()
            if pending.done:  # another caller's batch ran it
                return pending.outcome()
        # this caller runs the next batch: everything queued by now, its own request first
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._run(batch)
        finally:
            with self._lock:
                self.batches += 1
                following = self._queue[0] if self._queue else None
                self._running = following is not None
            for settled in batch:
                if settled is not pending:
                    settled.woken.set()
            if following is not None:
                following.woken.set()  # not settled: its turn to run the next batch
        return pending.outcome()

    def _run(self, batch: list[Pending[Request]]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as e:  # noqa: BLE001 - settles everyone; outcome() raises it
            for pending in batch:
                if not pending.done:
                    pending.fail(e)
        for pending in batch:  # woken unsettled, a caller would take itself for the runner
            if not pending.done:
                pending.fail(RuntimeError("the batch left this request unsettled"))
