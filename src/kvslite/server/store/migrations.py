"""Bringing a database to the schema in `schema`: a new one is created from it, an older
one upgraded step by step.

Each engine numbers its schema versions (SQLite in `PRAGMA user_version`, PostgreSQL as
rows of `kvslite_schema`) and lists its migrations, version N bringing N-1 to N
(sqlite_schema.MIGRATIONS, postgres_schema.MIGRATIONS). Until the schema was defined once,
each engine had its own SQL scripts: that history stays as it was, so databases of any
earlier kvslite still open. Every later step is written once, here in STEPS, and both
lists end with them. tests/test_store_schema.py checks that an upgraded database has the
very schema a new one gets.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from kvslite.server.store import schema

# A migration: an engine's SQL script from before STEPS (statements split on ";", none of
# which may hold one; a line "REBUILD" marks a SQLite table rebuild, which the SQLite
# store runs with foreign keys off), or a step written once for both engines.
Migration = str | Callable[[sa.Connection], None]


def same_indexes_on_both(conn: sa.Connection) -> None:
    """The indexes PostgreSQL had and SQLite lacked: a stream's latest header, the
    fragments a header cascades to, a stream's deliveries."""
    for index in ("headers_by_stream", "fragments_by_header", "deliveries_by_stream"):
        _index(index).create(conn, checkfirst=True)


def signaling_channels(conn: sa.Connection) -> None:
    """WebRTC signaling channels and their tags."""
    schema.metadata.create_all(conn, tables=[schema.signaling_channels, schema.channel_tags])


def media_storage(conn: sa.Connection) -> None:
    """WebRTC ingestion: the stream each channel's media is stored in."""
    schema.metadata.create_all(conn, tables=[schema.media_storage])


def iam_users(conn: sa.Connection) -> None:
    """IAM users, their access keys and inline policies."""
    schema.metadata.create_all(conn, tables=[schema.iam_users, schema.iam_access_keys,
                                             schema.iam_user_policies])


def one_producer_time_index(conn: sa.Connection) -> None:
    """fragments_by_content, (arn, producer_ms, digest), serves lookups by producer time
    as well: the index on (arn, producer_ms) alone only cost every commit a page."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS fragments_by_producer_time")


def numbers_by_seq(conn: sa.Connection) -> None:
    """A fragment's number is found by its seq (the primary key), so the index on
    (arn, number) only cost every commit a page."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS fragments_by_number")


STEPS: list[Migration] = [same_indexes_on_both, signaling_channels, media_storage, iam_users,
                          one_producer_time_index, numbers_by_seq]


def migrate(conn: sa.Connection, migrations: list[Migration], version: int,
            where: str) -> int:
    """In the caller's transaction, bring a schema at `version` (0: a new database) to the
    latest; returns that. Raises RuntimeError for a schema newer than this kvslite's."""
    latest = len(migrations)
    if version > latest:
        raise RuntimeError(f"{where} has schema version {version}, newer than this "
                           f"kvslite ({latest}); upgrade kvslite")
    if version == 0:
        schema.metadata.create_all(conn)
        return latest
    for migration in migrations[version:]:
        if isinstance(migration, str):
            _run_script(conn, migration)
        else:
            migration(conn)
    return latest


def _run_script(conn: sa.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip() and statement.strip() != "REBUILD":
            conn.exec_driver_sql(statement)


def _index(name: str) -> sa.Index:
    return next(index for table in schema.metadata.tables.values()
                for index in table.indexes if index.name == name)
