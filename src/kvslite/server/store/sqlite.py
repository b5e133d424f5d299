"""The embedded metadata store: one SQLite file in WAL mode.

Every write is one `BEGIN IMMEDIATE` transaction committed with synchronous=FULL, so
what a caller was told is stored survives a crash, and writers in other threads or
processes wait their turn: each guarantee of `MetadataStore` holds because SQLite runs
write transactions one at a time. This process runs all of its writes on one connection,
taken in turn (`_writer_turn`); reads use a pool. The queries are sql_store's; this module holds what is
SQLite's own (see the hooks in `database`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from kvslite.server.store.new_fragments import NewFragments
from kvslite.server.store.schema import INT
from kvslite.server.store.sql_store import SqlMetadataStore
from kvslite.server.store.sqlite_schema import MIGRATIONS

POOL_SIZE = 16  # readers' connections kept open; more are opened (and closed) when needed
WRITER_WAIT_S = 30.0  # how long a write waits for its turn, as for SQLite's own write lock


def _enable_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Switching a new file to WAL needs it to ourselves, and SQLite does not wait for
    that as it waits for locks: retry while another opener holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteMetadataStore(SqlMetadataStore):
    """The metadata store on SQLite. Live readers are woken by this instance's own commits:
    one process serves a SQLite archive (the data directory is locked)."""

    BEGIN = "BEGIN IMMEDIATE"  # the write lock up front: no upgrade deadlocks
    NOW = sa.bindparam("now", type_=INT)
    MIGRATIONS = MIGRATIONS
    insert = staticmethod(sqlite.insert)

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.new_fragments = NewFragments()
        engine = sa.create_engine("sqlite://", creator=partial(_connect, self.path),
                                  poolclass=sa.QueuePool, pool_size=POOL_SIZE,
                                  max_overflow=-1, isolation_level="AUTOCOMMIT")
        # every write transaction ends in a commit or a rollback of its own: no reset needed
        writer = sa.create_engine("sqlite://", creator=partial(_connect, self.path),
                                  poolclass=sa.StaticPool, isolation_level="AUTOCOMMIT",
                                  pool_reset_on_return=None)
        self._writer_lock = threading.Lock()
        super().__init__(engine, str(self.path), writer=writer)

    def ping(self, timeout_s: float) -> None:
        """A local file answers at once, or raises (missing, unreadable)."""
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1").all()

    def _fragment_committed(self, arn: str) -> None:
        self.new_fragments.notify(arn)

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """This process's writes take turns on one connection. Its page cache then stays
        warm: SQLite drops a connection's cache whenever another connection has written,
        and a pool of writers re-read ~30 pages per fragment. And a writer waiting its
        turn sleeps on a lock, not in SQLite's busy-wait backoff (sleeps of up to 100 ms)."""
        if not self._writer_lock.acquire(timeout=WRITER_WAIT_S):
            raise sqlite3.OperationalError("database is locked")  # as SQLite says it
        try:
            yield
        finally:
            self._writer_lock.release()

    # -- hooks ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _migrate_on(self, conn: sa.Connection, where: str) -> None:
        # an old database's table rebuild must not cascade: foreign keys off meanwhile
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            super()._migrate_on(conn, where)
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")

    def _schema_version(self, conn: sa.Connection) -> int:
        return conn.exec_driver_sql("PRAGMA user_version").scalar_one()

    def _record_schema_version(self, conn: sa.Connection, old: int, new: int) -> None:
        if conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
            raise RuntimeError(f"upgrading {self.path} broke a foreign key")
        conn.exec_driver_sql(f"PRAGMA user_version = {int(new)}")

    def _is_disk_full(self, error: BaseException | None) -> bool:
        # SQLITE_FULL: "database or disk is full"
        return isinstance(error, sqlite3.OperationalError) and "full" in str(error)
