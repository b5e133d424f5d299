"""The PostgreSQL database under the metadata store: the connection pool, transactions,
the schema migration on opening, and the listener that wakes live readers (NOTIFY).

Connections come from a psycopg_pool ConnectionPool shared by the store's threads, in
autocommit mode; `_write()` is one transaction. A full disk is OutOfSpace, an error
clients can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from kvslite.server.api_errors import OutOfSpace
from kvslite.server.store.new_fragments import NewFragments
from kvslite.server.store.postgres_listen import FragmentListener
from kvslite.server.store.postgres_schema import migrate

# Now, in epoch ms: the injected clock's reading if there is one, else the database's.
NOW = ("coalesce(%(now)s::bigint, "
       "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)")


class PostgresDatabase:
    """One PostgreSQL database: a connection pool, write transactions, the migration.

    `url` is a libpq connection string or URI. The schema is migrated on opening;
    `pool_size` bounds the connections this instance holds open (plus one listening for
    fragment notifications, once a live reader waits)."""

    def __init__(self, url: str, *, clock: Callable[[], float] | None = None,
                 pool_size: int = 10):
        self.clock = clock
        self.url = url
        # live readers on any node are woken by NOTIFY; this node listens once one waits
        self.new_fragments = NewFragments(on_first_use=self._start_listening)
        self._listener: FragmentListener | None = None
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, f"PostgreSQL database {conn.info.dbname!r} on {conn.info.host}")
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, name="kvslite-metadata",
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=ConnectionPool.check_connection)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self._pool.close()

    def ping(self, timeout_s: float) -> None:
        """Raise unless the database answers within about `timeout_s`. A connection of its
        own, not the pool's: a pool waits out its own timeout (30 s) for a connection when
        the server is gone, and a readiness check must answer sooner than that."""
        seconds = max(2, round(timeout_s))  # libpq's connect_timeout: whole seconds, >= 2
        with psycopg.connect(self.url, autocommit=True, connect_timeout=seconds,
                             options=f"-c statement_timeout={seconds * 1000}") as conn:
            conn.execute("SELECT 1").fetchone()

    def _start_listening(self) -> None:
        self._listener = FragmentListener(self.url, self.new_fragments)
        self._listener.start()

    @contextmanager
    def _connection(self):
        """A connection in autocommit mode: each statement is its own transaction."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.DiskFull as e:  # SQLSTATE 53100
            raise OutOfSpace(str(e).strip()) from e

    @contextmanager
    def _write(self):
        """One transaction, committed on leaving the block, rolled back on an exception
        (psycopg.Rollback rolls back and leaves the block quietly)."""
        with self._connection() as conn, conn.transaction():
            yield conn

    def _now_ms(self) -> int | None:
        """The injected clock's reading, else None (the database's clock: see NOW)."""
        return None if self.clock is None else int(self.clock() * 1000)

    def _rows(self, sql: str, params=()) -> list[dict]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()
