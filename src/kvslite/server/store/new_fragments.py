"""NewFragments: wakes live readers when a stream gets a fragment, instead of polling.

A store calls `notify(arn)` when it learns of a committed fragment: the SQLite store right
after its own commit (one process), the PostgreSQL store when the database's NOTIFY comes
in (any node: see postgres_listen.py). A live reader takes `seen(arn)` before it reads the
index and then `await wait(arn, seen, timeout)`: a fragment committed in between is never
missed, and the timeout keeps it reading now and then should notifications stop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable


class NewFragments:
    def __init__(self, on_first_use: Callable[[], None] | None = None):
        self._lock = threading.Lock()
        self._counts: dict[str, int] = defaultdict(int)  # notifications per stream
        self._waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        self._on_first_use = on_first_use  # e.g. start listening, once someone waits

    def seen(self, arn: str) -> int:
        """A mark to wait from: how many notifications `arn` has had."""
        self._first_use()
        with self._lock:
            return self._counts[arn]

    def notify(self, arn: str) -> None:
        """`arn` has a new fragment (any thread)."""
        with self._lock:
            self._counts[arn] += 1
            waiters = self._waiters.pop(arn, set())
        for future in waiters:
            future.get_loop().call_soon_threadsafe(_wake, future)

    def notify_all(self) -> None:
        """Notifications may have been lost (a listener reconnected): wake every waiter to
        read the index again."""
        with self._lock:
            arns = list(self._waiters)
        for arn in arns:
            self.notify(arn)

    async def wait(self, arn: str, seen: int, timeout: float) -> bool:
        """Until `arn` has had a notification since `seen`, or `timeout` seconds; True if
        it has."""
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._counts[arn] != seen:
                return True
            self._waiters[arn].add(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiting = self._waiters.get(arn)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[arn]

    def _first_use(self) -> None:
        with self._lock:
            start, self._on_first_use = self._on_first_use, None
        if start is not None:
            start()


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
