"""The embedded metadata store: one SQLite file in WAL mode.

Every write is one transaction committed with synchronous=FULL, so what a
caller was told is stored survives a crash. Each thread gets its own
connection (sqlite3 connections are not shared across threads).
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

from kvslite.store.metadata import NameTaken, Stream

# Append-only: migration N brings the schema from version N-1 to N.
MIGRATIONS = [
    """
    CREATE TABLE streams (
        arn TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version TEXT NOT NULL,
        creation_time REAL NOT NULL,
        data_retention_hours INTEGER NOT NULL,
        kms_key_id TEXT NOT NULL,
        status TEXT NOT NULL,
        device_name TEXT,
        media_type TEXT
    );
    CREATE TABLE tags (
        arn TEXT NOT NULL REFERENCES streams(arn) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (arn, key)
    );
    """,
]

_STREAM_COLUMNS = [f.name for f in fields(Stream)]


class SqliteMetadataStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            conn.execute("PRAGMA journal_mode=WAL")
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
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this kvslite "
                    f"({len(MIGRATIONS)}); upgrade kvslite"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- streams ---------------------------------------------------------------------

    def create_stream(self, stream: Stream, tags: dict[str, str]) -> None:
        row = asdict(stream)
        try:
            with self._write() as conn:
                conn.execute(
                    f"INSERT INTO streams ({', '.join(row)}) "
                    f"VALUES ({', '.join('?' for _ in row)})",
                    list(row.values()),
                )
                conn.executemany(
                    "INSERT INTO tags (arn, key, value) VALUES (?, ?, ?)",
                    [(stream.arn, k, v) for k, v in tags.items()],
                )
        except sqlite3.IntegrityError as e:
            raise NameTaken(stream.name) from e

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream | None:
        column, value = ("arn", arn) if arn is not None else ("name", name)
        row = self._connection().execute(
            f"SELECT {', '.join(_STREAM_COLUMNS)} FROM streams WHERE {column} = ?", (value,)
        ).fetchone()
        return Stream(**dict(row)) if row else None

    def list_streams(self, *, prefix: str, after: str, limit: int) -> list[Stream]:
        # substr() compares the prefix exactly; LIKE would treat _ as a wildcard
        rows = self._connection().execute(
            f"SELECT {', '.join(_STREAM_COLUMNS)} FROM streams "
            "WHERE substr(name, 1, length(?)) = ? AND name > ? ORDER BY name LIMIT ?",
            (prefix, prefix, after, limit),
        ).fetchall()
        return [Stream(**dict(row)) for row in rows]

    def update_stream(self, arn: str, expected_version: str, **changes) -> bool:
        unknown = set(changes) - set(_STREAM_COLUMNS)
        if unknown:
            raise ValueError(f"unknown stream fields: {sorted(unknown)}")
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE streams SET {assignments} WHERE arn = ? AND version = ?",
                [*changes.values(), arn, expected_version],
            )
        return cursor.rowcount == 1

    def delete_stream(self, arn: str, expected_version: str | None) -> bool:
        with self._write() as conn:
            if expected_version is None:
                cursor = conn.execute("DELETE FROM streams WHERE arn = ?", (arn,))
            else:
                cursor = conn.execute(
                    "DELETE FROM streams WHERE arn = ? AND version = ?", (arn, expected_version)
                )
        return cursor.rowcount == 1

    # -- tags ------------------------------------------------------------------------

    def get_tags(self, arn: str) -> dict[str, str]:
        rows = self._connection().execute(
            "SELECT key, value FROM tags WHERE arn = ? ORDER BY key", (arn,)
        ).fetchall()
        return {row["key"]: row["value"] for row in rows}

    def put_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        with self._write() as conn:
            existing = {row[0] for row in conn.execute("SELECT key FROM tags WHERE arn = ?",
                                                        (arn,))}
            if len(existing | set(tags)) > max_tags:
                return False
            conn.executemany(
                "INSERT INTO tags (arn, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (arn, key) DO UPDATE SET value = excluded.value",
                [(arn, k, v) for k, v in tags.items()],
            )
        return True

    def delete_tags(self, arn: str, keys: list[str]) -> None:
        with self._write() as conn:
            conn.executemany("DELETE FROM tags WHERE arn = ? AND key = ?",
                             [(arn, k) for k in keys])
