"""The SQLite database file under the metadata store: connections, transactions, schema.

Every write is one `BEGIN IMMEDIATE` transaction committed with synchronous=FULL, so
what a caller was told is stored survives a crash, and writers in other threads or
processes wait their turn. Each thread gets its own connection (sqlite3 connections are
not shared across threads). A full disk is OutOfSpace, an error clients can act on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from kvslite.server.api_errors import OutOfSpace
from kvslite.server.store.sqlite_schema import MIGRATIONS


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


class SqliteDatabase:
    """One SQLite file: a connection per thread, write transactions, migrations."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    # -- connections and transactions -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.row_factory = sqlite3.Row
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self):
        """A write transaction that takes the lock up front (no upgrade deadlocks)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if "full" in str(e):  # SQLITE_FULL: "database or disk is full"
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise OutOfSpace(str(e)) from e
            raise

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def ping(self, timeout_s: float) -> None:
        """A local file answers at once, or raises (missing, unreadable)."""
        self._connection().execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()

    def _migrate(self) -> None:
        conn = self._connection()
        for version, migration in enumerate(MIGRATIONS, start=1):
            rebuild = migration.lstrip().startswith("REBUILD;")
            if rebuild:  # SQLite rebuilds tables only with foreign keys off, outside a txn
                conn.execute("PRAGMA foreign_keys=OFF")
            try:
                with self._write() as conn:
                    current = conn.execute("PRAGMA user_version").fetchone()[0]
                    if current > len(MIGRATIONS):
                        raise RuntimeError(
                            f"{self.path} has schema version {current}, newer than this "
                            f"kvslite ({len(MIGRATIONS)}); upgrade kvslite")
                    if current >= version:
                        continue
                    for statement in migration.split(";"):
                        if statement.strip() and statement.strip() != "REBUILD":
                            conn.execute(statement)
                    if rebuild and conn.execute("PRAGMA foreign_key_check").fetchone():
                        raise RuntimeError(f"migration {version} broke a foreign key")
                    conn.execute(f"PRAGMA user_version = {version}")
            finally:
                conn.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
