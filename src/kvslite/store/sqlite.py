"""The embedded metadata store: one SQLite file in WAL mode.

Every write is one transaction committed with synchronous=FULL, so what a
caller was told is stored survives a crash. Each thread gets its own
connection (sqlite3 connections are not shared across threads).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

from kvslite.store.metadata import Clock, Fragment, NameTaken, Stream, fragment_number

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
    # 2: fragments. `seq` orders a stream's fragments; `frames` is the packed frame index
    # (see kvslite.archive.fragments) so readers never rescan a stored cluster.
    """
    CREATE TABLE headers (
        id INTEGER PRIMARY KEY,
        arn TEXT NOT NULL REFERENCES streams(arn) ON DELETE CASCADE,
        data BLOB NOT NULL
    );
    CREATE TABLE fragments (
        arn TEXT NOT NULL REFERENCES streams(arn) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        number TEXT NOT NULL,
        producer_ms INTEGER NOT NULL,
        server_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        size INTEGER NOT NULL,
        header_id INTEGER NOT NULL REFERENCES headers(id) ON DELETE CASCADE,
        blob_key TEXT NOT NULL,
        frames BLOB NOT NULL,
        PRIMARY KEY (arn, seq)
    );
    CREATE UNIQUE INDEX fragments_by_number ON fragments (arn, number);
    CREATE INDEX fragments_by_producer_time ON fragments (arn, producer_ms);
    CREATE INDEX fragments_by_server_time ON fragments (arn, server_ms);
    """,
    # 3: server-wide secrets (e.g. the key that signs GetImages NextTokens), shared by nodes
    """
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """,
]

_STREAM_COLUMNS = [f.name for f in fields(Stream)]
_FRAGMENT_COLUMNS = ", ".join(f.name for f in fields(Fragment))
_TIME_COLUMNS = {Clock.PRODUCER: "producer_ms", Clock.SERVER: "server_ms"}


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

    # -- fragments -------------------------------------------------------------------

    def save_header(self, arn: str, data: bytes) -> int:
        with self._write() as conn:
            row = conn.execute("SELECT id, data FROM headers WHERE arn = ? ORDER BY id DESC "
                               "LIMIT 1", (arn,)).fetchone()
            if row and row["data"] == data:
                return row["id"]
            return conn.execute("INSERT INTO headers (arn, data) VALUES (?, ?)",
                                (arn, data)).lastrowid

    def get_header(self, header_id: int) -> bytes:
        row = self._connection().execute("SELECT data FROM headers WHERE id = ?",
                                         (header_id,)).fetchone()
        if row is None:
            raise KeyError(header_id)
        return row["data"]

    def add_fragment(self, **fields) -> Fragment:
        with self._write() as conn:
            last = conn.execute("SELECT max(seq) FROM fragments WHERE arn = ?",
                                (fields["arn"],)).fetchone()[0]
            seq = (last or 0) + 1
            fragment = Fragment(seq=seq, number=fragment_number(seq), **fields)
            row = asdict(fragment)
            conn.execute(f"INSERT INTO fragments ({', '.join(row)}) "
                         f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))
        return fragment

    def _fragments(self, where: str, params: tuple) -> list[Fragment]:
        rows = self._connection().execute(
            f"SELECT {_FRAGMENT_COLUMNS} FROM fragments WHERE {where}", params).fetchall()
        return [Fragment(**dict(row)) for row in rows]

    def find_fragment(self, arn: str, *, producer_ms: int) -> Fragment | None:
        found = self._fragments("arn = ? AND producer_ms = ? ORDER BY seq LIMIT 1",
                                (arn, producer_ms))
        return found[0] if found else None

    def list_fragments(self, arn: str, *, clock: Clock | None = None, start_ms: int = 0,
                       end_ms: int = 0, after_seq: int = 0, limit: int) -> list[Fragment]:
        if clock is None:
            return self._fragments("arn = ? AND seq > ? ORDER BY seq LIMIT ?",
                                   (arn, after_seq, limit))
        time_column = _TIME_COLUMNS[clock]
        return self._fragments(
            f"arn = ? AND {time_column} BETWEEN ? AND ? AND seq > ? ORDER BY seq LIMIT ?",
            (arn, start_ms, end_ms, after_seq, limit))

    def fragments_by_number(self, arn: str, numbers: list[str]) -> dict[str, Fragment]:
        found: dict[str, Fragment] = {}
        for start in range(0, len(numbers), 500):  # stay under SQLite's variable limit
            batch = numbers[start:start + 500]
            marks = ", ".join("?" for _ in batch)
            for fragment in self._fragments(f"arn = ? AND number IN ({marks})", (arn, *batch)):
                found[fragment.number] = fragment
        return found

    def latest_fragment(self, arn: str) -> Fragment | None:
        found = self._fragments("arn = ? ORDER BY seq DESC LIMIT 1", (arn,))
        return found[0] if found else None

    def fragment_at(self, arn: str, clock: Clock, ms: int) -> Fragment | None:
        time_column = _TIME_COLUMNS[clock]
        before = self._fragments(
            f"arn = ? AND {time_column} <= ? ORDER BY {time_column} DESC, seq DESC LIMIT 1",
            (arn, ms))
        if before and before[0].start_ms(clock) + before[0].duration_ms > ms:
            return before[0]
        after = self._fragments(
            f"arn = ? AND {time_column} > ? ORDER BY {time_column}, seq LIMIT 1", (arn, ms))
        return after[0] if after else None

    def fragments_overlapping(self, arn: str, clock: Clock, start_ms: int, end_ms: int,
                              max_duration_ms: int) -> list[Fragment]:
        time_column = _TIME_COLUMNS[clock]
        # the lower bound on the start keeps the index useful; no fragment is longer
        return self._fragments(
            f"arn = ? AND {time_column} BETWEEN ? AND ? AND {time_column} + duration_ms > ? "
            f"ORDER BY {time_column}, seq",
            (arn, start_ms - max_duration_ms, end_ms, start_ms))

    # -- secrets ---------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                         (name, secrets.token_bytes(32)))
            return conn.execute("SELECT value FROM secrets WHERE name = ?",
                                (name,)).fetchone()[0]
