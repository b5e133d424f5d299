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
  can act on);
- `writer` and `_writer_turn()`: where write transactions run and who may run one now
  (PostgreSQL: any pooled connection, concurrently; SQLite: one connection, in turn).

Row locks are written with `with_for_update()`, which PostgreSQL renders and SQLite, whose
write transactions run one at a time anyway, leaves out.

SQLAlchemy spends about 100 us building a statement and 25 us more running it, several
times what SQLite takes for a lookup. So the statements ingest and live readers run for
every fragment are built once, with named parameters, compiled once for the engine, and
run on the driver's own cursor (`_run_compiled`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa

from kvslite.server.api_errors import OutOfSpace
from kvslite.server.store.migrations import Migration, migrate


class _Compiled(NamedTuple):
    sql: str
    compiled: sa.sql.compiler.SQLCompiler

    def parameters(self, values: dict[str, Any]) -> Any:
        """The driver's parameters: by name, or in order where its SQL has `?`."""
        named = self.compiled.construct_params(values)
        order = self.compiled.positiontup
        return named if order is None else [named[name] for name in order]


class SqlDatabase(ABC):
    """Abstract: SqliteMetadataStore and PostgresMetadataStore fill in the hooks below."""

    BEGIN: ClassVar[str]  # the statement that starts a write transaction
    NOW: ClassVar[sa.ColumnElement[int]]  # now in epoch ms, given parameter "now" (_now_ms)
    MIGRATIONS: ClassVar[list[Migration]]
    insert: ClassVar[Callable[..., Any]]  # sqlalchemy.dialects.<engine>.insert

    def __init__(self, engine: sa.Engine, where: str, *, writer: sa.Engine | None = None):
        self._engine = engine
        self._writer = writer or engine  # where write transactions run
        self._compiled: dict[sa.Executable, _Compiled] = {}
        self._migrate(where)

    def close(self) -> None:
        self._engine.dispose()
        self._writer.dispose()

    # -- connections and transactions -----------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._errors(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One transaction, committed on leaving the block, rolled back on an exception.
        A block may roll back itself (`_rollback`) and leave: nothing is committed."""
        with self._errors(), self._writer_turn(), self._writer.connect() as conn, \
                self._transaction(conn):
            yield conn

    def _writer_turn(self) -> AbstractContextManager[object]:
        """Held while a write transaction runs: nothing here (the database orders
        concurrent writers itself), or a turn on a single writer connection."""
        return nullcontext()

    @contextmanager
    def _transaction(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        """Begun and ended on the driver's connection (whose commit and rollback act on
        the transaction it is in), so statements run by SQLAlchemy and by _run_compiled
        share it."""
        conn.connection.cursor().execute(self.BEGIN)
        try:
            yield conn
        except BaseException:
            self._rollback(conn)
            raise
        conn.connection.commit()

    @staticmethod
    def _rollback(conn: sa.Connection) -> None:
        conn.connection.rollback()

    def _run_compiled(self, conn: sa.Connection, statement: sa.Executable,
                      **values: Any) -> list[tuple]:
        """Run a statement built once on the driver's cursor, in `conn`'s transaction if
        it has one; its rows as tuples, in the order of its columns."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = _Compiled(*self._compile(statement))
            self._compiled[statement] = compiled
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, compiled.parameters(values))
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()

    def _compile(self, statement: sa.Executable) -> tuple[str, sa.sql.compiler.SQLCompiler]:
        compiled = statement.compile(dialect=self._engine.dialect)  # type: ignore[attr-defined]
        assert isinstance(compiled, sa.sql.compiler.SQLCompiler)
        return compiled.string, compiled

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as e:
            if self._is_disk_full(e.orig):
                raise OutOfSpace(str(e.orig).strip()) from e
            raise
        except Exception as e:  # from the driver itself (_run_compiled)
            if self._is_disk_full(e):
                raise OutOfSpace(str(e).strip()) from e
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

    @abstractmethod
    def _now_ms(self) -> int | None:
        """The parameter "now" of statements that read NOW: the store's clock in epoch ms,
        or None where NOW reads the database's clock."""

    @abstractmethod
    def _schema_version(self, conn: sa.Connection) -> int:
        """The schema's version (0 for a new database), locked until the transaction
        ends: nodes opening the database together migrate it once."""

    @abstractmethod
    def _record_schema_version(self, conn: sa.Connection, old: int, new: int) -> None:
        """Record that the schema went from version `old` to `new`, in `conn`'s
        transaction."""

    @abstractmethod
    def _is_disk_full(self, error: BaseException | None) -> bool:
        """Whether the driver's `error` means the database's disk is full."""
