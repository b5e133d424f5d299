"""The metadata store on PostgreSQL, for kvslite running as several nodes on one database.

The queries are sql_store's, which says how each guarantee holds on PostgreSQL's row
locks; this module holds what is PostgreSQL's own (see the hooks in `database`): the
connection pool, the database's clock, NOTIFY on each new fragment and the listener that
wakes live readers, and the schema version kept in `kvslite_schema`.

Lease times are the database's clock (`clock_timestamp()`), so nodes with skewed clocks
agree on when a lease expires, unless a `clock` is injected (tests).
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kvslite.server.store.new_fragments import NewFragments
from kvslite.server.store.postgres_listen import CHANNEL, FragmentListener
from kvslite.server.store.postgres_schema import MIGRATIONS
from kvslite.server.store.schema import INT
from kvslite.server.store.sql_store import SqlMetadataStore

# Any fixed 64-bit number: the key of the advisory lock that serialises migrations.
# Advisory locks are per database, so databases on one server migrate independently.
MIGRATION_LOCK = 0x6B76_736C_6974_6501
_DATABASE_NOW = sa.cast(sa.func.floor(sa.extract("epoch", sa.func.clock_timestamp()) * 1000),
                        INT)


class PostgresMetadataStore(SqlMetadataStore):
    """The metadata store on PostgreSQL: each guarantee of MetadataStore is one transaction.

    `url` is a libpq connection string or URI. The schema is migrated on opening;
    `pool_size` bounds the connections this instance holds open (plus one listening for
    fragment notifications, once a live reader waits)."""

    BEGIN = "BEGIN"  # READ COMMITTED; sql_store's first statements lock what they decide on
    # the injected clock's reading if there is one, else the database's
    NOW = sa.func.coalesce(sa.bindparam("now", type_=INT), _DATABASE_NOW)
    MIGRATIONS = MIGRATIONS
    insert = staticmethod(postgresql.insert)

    def __init__(self, url: str, *, clock: Callable[[], float] | None = None,
                 pool_size: int = 10):
        self.url = url
        self.clock = clock
        # live readers on any node are woken by NOTIFY; this node listens once one waits
        self.new_fragments = NewFragments(on_first_use=self._start_listening)
        self._listener: FragmentListener | None = None
        engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url),
                                  pool_size=pool_size, max_overflow=0, pool_pre_ping=True,
                                  isolation_level="AUTOCOMMIT")
        with psycopg.connect(url) as conn:
            where = f"PostgreSQL database {conn.info.dbname!r} on {conn.info.host}"
        super().__init__(engine, where)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        super().close()

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

    def _fragments_added(self, conn: sa.Connection, arns: list[str]) -> None:
        # delivered to every node's listener when (and only if) the fragments commit; one
        # statement for the batch's streams
        if arns:
            conn.exec_driver_sql(
                "SELECT pg_notify(%(channel)s, arn) FROM unnest(%(arns)s::text[]) arn",
                {"channel": CHANNEL, "arns": arns})

    # -- hooks ----------------------------------------------------------------------------

    def _now_ms(self) -> int | None:
        return None if self.clock is None else int(self.clock() * 1000)

    def _schema_version(self, conn: sa.Connection) -> int:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS kvslite_schema ("
                             "version INTEGER PRIMARY KEY, "
                             "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        return conn.exec_driver_sql(
            "SELECT coalesce(max(version), 0) FROM kvslite_schema").scalar_one()

    def _record_schema_version(self, conn: sa.Connection, old: int, new: int) -> None:
        conn.execute(sa.text("INSERT INTO kvslite_schema (version) VALUES (:version)"),
                     [{"version": version} for version in range(old + 1, new + 1)])

    def _is_disk_full(self, error: BaseException | None) -> bool:
        return isinstance(error, psycopg.errors.DiskFull)  # SQLSTATE 53100
