"""BackgroundWorker: a daemon thread that does a pass of work now and then.

A pass runs every `interval_s`, at once when woken (`wake()`: there is new work), and again
straight away when it reports more is waiting. A pass that raises is logged and retried at
the next interval: background work must outlive a database that is down for a while.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

log = logging.getLogger("kvslite")


class BackgroundWorker(ABC):
    name = "kvslite-worker"  # the thread's name, and what the log calls it

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def run_pass(self) -> bool:
        """Do one pass; True if more work is waiting already."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Do a pass now instead of at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                more = self.run_pass()
            except Exception:  # a failing pass must not end the worker; the next retries
                log.exception("%s: pass failed; retrying in %.0f s", self.name, self.interval_s)
                more = False
            if not more:
                self._wake.wait(self.interval_s)
                self._wake.clear()
