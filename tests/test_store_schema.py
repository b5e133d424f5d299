"""The metadata schema, defined once (src/kvslite/store/schema.py): both engines get the
same tables, columns, keys and indexes; a database made by an earlier kvslite (the
engine's own SQL migrations, kept as history) opens with its data and ends up with
exactly the schema of a new one; and the store's methods take typed parameters."""

from __future__ import annotations

import inspect
import sqlite3

import psycopg
import pytest
import sqlalchemy as sa
from postgres_server import fresh_database
from postgres_server import postgres_url  # noqa: F401 - the PostgreSQL server fixture

from kvslite.server.store import postgres_schema, sqlite_schema
from kvslite.server.store.metadata import MetadataStore
from kvslite.server.store.postgres import PostgresMetadataStore
from kvslite.server.store.sqlite import SqliteMetadataStore

ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/old/1"


def old_rows(blob) -> list[str]:
    """Rows as an earlier kvslite wrote them, valid in its latest SQL schema on either
    engine; `blob(data)` writes a blob literal in the engine's SQL."""
    number = "'90000000000000000000000000000000000000000000002'"
    return [
        "INSERT INTO streams (arn, name, version, creation_time, data_retention_hours, "
        f"kms_key_id, status, last_seq) VALUES ('{ARN}', 'old', 'v1', 1.5, 24, 'k', "
        "'ACTIVE', 2)",
        f"INSERT INTO tags (arn, key, value) VALUES ('{ARN}', 'site', 'north')",
        f"INSERT INTO headers (arn, data) VALUES ('{ARN}', {blob(b'EBML')})",
        "INSERT INTO fragments (arn, seq, number, producer_ms, server_ms, duration_ms, size, "
        f"header_id, blob_key, frames, digest) VALUES ('{ARN}', 2, {number}, 1000, 2000, "
        f"1000, 10, 1, 'k/1', {blob(b'f')}, {blob(b'd')})",
        f"INSERT INTO deliveries (arn, fragment_number, kind, event) VALUES ('{ARN}', "
        f"{number}, 'notification', '{{}}')",
    ]


def sqlite_blob(data: bytes) -> str:
    return f"X'{data.hex()}'"


def postgres_blob(data: bytes) -> str:
    return f"'\\x{data.hex()}'::bytea"


def shape(engine: sa.Engine, *, types: bool) -> dict:
    """Every table's columns (in order), keys and indexes, as the database reports them."""
    inspector = sa.inspect(engine)
    tables = {}
    for table in sorted(set(inspector.get_table_names()) - {"kvslite_schema"}):
        key = inspector.get_pk_constraint(table)["constrained_columns"]
        tables[table] = {
            "columns": [(c["name"], str(c["type"]) if types else None,
                         c["nullable"] or c["name"] in key) for c in inspector.get_columns(table)],
            "primary key": key,
            "foreign keys": foreign_keys(engine, inspector, table),
            "indexes": sorted((i["name"], i["column_names"], bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
        }
    return tables


def foreign_keys(engine: sa.Engine, inspector, table: str) -> list[tuple]:
    if engine.dialect.name == "sqlite":  # SQLAlchemy reads SQLite's ON DELETE only from
        with engine.connect() as conn:  # FOREIGN KEY clauses, not from column REFERENCES
            rows = conn.exec_driver_sql(f"PRAGMA foreign_key_list({table})").mappings()
            return sorted((r["from"], r["table"], r["to"], r["on_delete"]) for r in rows)
    return sorted((*fk["constrained_columns"], fk["referred_table"], *fk["referred_columns"],
                   fk["options"].get("ondelete")) for fk in inspector.get_foreign_keys(table))


def sqlite_shape(path, *, types: bool = True) -> dict:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        return shape(engine, types=types)
    finally:
        engine.dispose()


def postgres_shape(url: str, *, types: bool = True) -> dict:
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    try:
        return shape(engine, types=types)
    finally:
        engine.dispose()


def test_both_engines_have_the_same_tables_keys_and_indexes(tmp_path, postgres_url):  # noqa: F811
    SqliteMetadataStore(tmp_path / "meta.db").close()
    url = fresh_database(postgres_url)
    PostgresMetadataStore(url).close()
    lite = sqlite_shape(tmp_path / "meta.db", types=False)
    assert postgres_shape(url, types=False) == lite
    assert sorted(lite) == ["channel_tags", "deliveries", "fragments", "headers",
                            "iam_access_keys", "iam_user_policies", "iam_users",
                            "lease_epochs", "leases", "media_storage", "secrets",
                            "signaling_channels",
                            "stream_configs", "streams", "tags"]
    assert [name for name, _, _ in lite["fragments"]["indexes"]] == [
        "fragments_by_blob", "fragments_by_content", "fragments_by_header",
        "fragments_by_server_time"]


def test_an_earlier_sqlite_database_opens_with_its_data_and_the_new_schema(tmp_path):
    """Each version the SQL history reached (1 to its last) upgrades; the last is where
    every database made before the shared schema stands."""
    SqliteMetadataStore(tmp_path / "new.db").close()
    new = sqlite_shape(tmp_path / "new.db")
    history = sqlite_schema.HISTORY
    for version in range(1, len(history) + 1):
        path = tmp_path / f"v{version}.db"
        with sqlite3.connect(path, isolation_level=None) as conn:
            for script in history[:version]:
                conn.executescript(script.replace("REBUILD;", ""))
            conn.execute(f"PRAGMA user_version = {version}")
            if version == len(history):
                for row in old_rows(sqlite_blob):
                    conn.execute(row)
        store = SqliteMetadataStore(path)
        try:
            assert sqlite_shape(path) == new, version
            if version == len(history):
                assert_old_rows_read(store)
        finally:
            store.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(
                sqlite_schema.MIGRATIONS)


def test_an_earlier_postgres_database_opens_with_its_data_and_the_new_schema(
        postgres_url):  # noqa: F811
    new_url = fresh_database(postgres_url)
    PostgresMetadataStore(new_url).close()
    new = postgres_shape(new_url)
    history = postgres_schema.HISTORY
    for version in range(1, len(history) + 1):
        url = fresh_database(postgres_url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kvslite_schema (version INTEGER PRIMARY KEY, "
                         "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for number, script in enumerate(history[:version], start=1):
                for statement in script.split(";"):
                    conn.execute(statement)
                conn.execute("INSERT INTO kvslite_schema (version) VALUES (%s)", (number,))
            if version == len(history):
                for row in old_rows(postgres_blob):
                    conn.execute(row)
        store = PostgresMetadataStore(url)
        try:
            assert postgres_shape(url) == new, version
            if version == len(history):
                assert_old_rows_read(store)
        finally:
            store.close()
        with psycopg.connect(url) as conn:
            versions = conn.execute("SELECT version FROM kvslite_schema ORDER BY version")
            assert [v for v, in versions] == list(
                range(1, len(postgres_schema.MIGRATIONS) + 1))


def assert_old_rows_read(store) -> None:
    stream = store.get_stream(name="old")
    assert (stream.arn, stream.version, stream.creation_time) == (ARN, "v1", 1.5)
    assert store.get_tags(ARN) == {"site": "north"}
    [old] = store.list_fragments(ARN, limit=10)
    assert (old.seq, old.blob_key, old.frames, old.digest) == (2, "k/1", b"f", b"d")
    assert store.get_header(old.header_id) == b"EBML"
    assert store.count_deliveries(ARN) == 1
    fragment, created = store.add_fragment(
        arn=ARN, producer_ms=3000, server_ms=4000, duration_ms=1000, size=1,
        header_id=old.header_id, blob_key="k/2", frames=b"", digest=b"e")
    assert created and fragment.seq == 3


@pytest.mark.parametrize("store", [MetadataStore, SqliteMetadataStore, PostgresMetadataStore],
                         ids=lambda store: store.__name__)
def test_every_store_method_takes_typed_parameters(store):
    """No `**fields` bags: a misspelt or renamed field is a type error, not a column."""
    methods = [name for name, _ in inspect.getmembers(store, inspect.isfunction)
               if not name.startswith("_")]
    assert {"add_fragment", "update_stream", "purge_stream"} <= set(methods)
    for name in methods:
        for parameter in list(inspect.signature(getattr(store, name)).parameters.values())[1:]:
            assert parameter.kind is not parameter.VAR_KEYWORD, (name, parameter)
            assert parameter.annotation is not parameter.empty, (name, parameter)
