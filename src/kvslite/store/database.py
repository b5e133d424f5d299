"""The database under a metadata store: an SQLAlchemy engine, transactions, the schema.

`SqlDatabase` is what the SQLite and PostgreSQL stores share. Connections run in
autocommit mode, so a read is one statement and holds no transaction open; `_write()` is
one transaction. Where the engines differ, a subclass fills in a small, named hook:

- BEGIN: how a write transaction starts (SQLite takes its write lock up front);
- `insert`: the dialect's INSERT, which has ON CONFLICT for upserts;
- NOW and `_now_ms()`: what "now" is in a statement (the store's clock, or the
  database's);
- `_schema_version()` / `_record_schema_version()`: where the schema version is kept;
- `_is_disk_full()`: which driver error means a full disk (OutOfSpace, an error clients
  can act on).

Row locks are written with `with_for_update()`, which PostgreSQL renders and SQLite, whose
write transactions run one at a time anyway, leaves out.

Building a statement costs SQLAlchemy far more than running it (about 100 us a query),
so the statements ingest runs for every fragment are built once, with named parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa

from kvslite.errors import OutOfSpace
from kvslite.store.migrations import Migration, migrate


class SqlDatabase:
    BEGIN: ClassVar[str]  # the statement that starts a write transaction
    NOW: ClassVar[sa.ColumnElement[int]]  # now in epoch ms, given parameter "now" (_now_ms)
    MIGRATIONS: ClassVar[list[Migration]]
    insert: ClassVar[Callable[..., Any]]  # sqlalchemy.dialects.<engine>.insert

    def __init__(self, engine: sa.Engine, where: str):
        self._engine = engine
        self._migrate(where)

    def close(self) -> None:
        self._engine.dispose()

    # -- connections and transactions -----------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._errors(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One transaction, committed on leaving the block, rolled back on an exception.
        A block may roll back itself (`conn.rollback()`) and leave: nothing is committed."""
        with self._errors(), self._engine.connect() as conn, self._transaction(conn):
            yield conn

    @contextmanager
    def _transaction(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        conn.exec_driver_sql(self.BEGIN)
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as e:
            if self._is_disk_full(e.orig):
                raise OutOfSpace(str(e.orig).strip()) from e
            raise

    # -- the schema -----------------------------------------------------------------------

    def _migrate(self, where: str) -> None:
        with self._errors(), self._engine.connect() as conn:
            self._migrate_on(conn, where)

    def _migrate_on(self, conn: sa.Connection, where: str) -> None:
        with self._transaction(conn):
            version = self._schema_version(conn)
            latest = migrate(conn, self.MIGRATIONS, version, where)
            if latest != version:
                self._record_schema_version(conn, version, latest)

    # -- hooks ----------------------------------------------------------------------------

    def _now_ms(self) -> int | None:
        """The parameter "now" of statements that read NOW: the store's clock in epoch ms,
        or None where NOW reads the database's clock."""
        raise NotImplementedError

    def _schema_version(self, conn: sa.Connection) -> int:
        """The schema's version (0 for a new database), locked until the transaction
        ends: nodes opening the database together migrate it once."""
        raise NotImplementedError

    def _record_schema_version(self, conn: sa.Connection, old: int, new: int) -> None:
        raise NotImplementedError

    def _is_disk_full(self, error: BaseException | None) -> bool:
        raise NotImplementedError
