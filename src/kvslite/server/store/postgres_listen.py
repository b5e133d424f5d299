"""Fragment notifications between nodes, by PostgreSQL's LISTEN/NOTIFY.

The transaction that commits a fragment also runs `pg_notify(CHANNEL, arn)`, which
PostgreSQL delivers to every listening session once (and only if) it commits. Each node
that has a live reader keeps one connection listening on CHANNEL, in a thread that hands
each notification to the store's NewFragments. If that connection drops, it reconnects
with backoff and wakes every waiter, since notifications sent meanwhile are lost; readers
also re-read the index on their own timeout, so nothing waits forever.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from .new_fragments import NewFragments

log = logging.getLogger("kvslite.store")

CHANNEL = "kvslite_fragments"
POLL_S = 1.0  # how often the listening thread checks that it should go on
MAX_BACKOFF_S = 10.0


class FragmentListener:
    """A daemon thread listening on CHANNEL at `url`, feeding `new_fragments`."""

    def __init__(self, url: str, new_fragments: NewFragments):
        self.url, self.new_fragments = url, new_fragments
        self.stopping = threading.Event()
        self.listening = threading.Event()  # set while LISTEN is in effect
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="kvslite-fragment-listener")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(POLL_S + 1)

    def _run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                self._listen()
                backoff = 0.5
            except psycopg.Error as e:
                log.warning("fragment notifications interrupted (%s); live reads fall back to "
                            "reading the index every second until they resume", e)
            self.listening.clear()
            self.new_fragments.notify_all()  # what was sent while not listening is lost
            self.stopping.wait(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _listen(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            self.new_fragments.notify_all()  # anything committed before LISTEN took effect
            while not self.stopping.is_set():
                for note in conn.notifies(timeout=POLL_S):
                    self.new_fragments.notify(note.payload)
