"""The embedded metadata store: one SQLite file in WAL mode (see `sqlite_db`).

Each guarantee of `MetadataStore` is one write transaction, and SQLite runs write
transactions one at a time across threads and processes.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import asdict, fields

from kvslite.server.store.metadata import (ACTIVE, DELETING, Clock, Fragment, Lease, LeaseLost,
                                    NameTaken, Stream, StreamNotActive, fragment_number)
from kvslite.server.store.new_fragments import NewFragments
from kvslite.server.store.sqlite_outbox import SqliteOutbox

_STREAM_COLUMNS = [f.name for f in fields(Stream)]
_FRAGMENT_COLUMNS = ", ".join(f.name for f in fields(Fragment))
_TIME_COLUMNS = {Clock.PRODUCER: "producer_ms", Clock.SERVER: "server_ms"}
_BATCH = 500  # stay under SQLite's limit on bound variables
# Of fragments sharing a start on a clock, only the newest (AWS's rule for the producer clock)
# (`+seq` keeps SQLite on the (arn, start) index instead of walking the seq key)
_NEWEST_OF_ITS_START = (" AND seq = (SELECT max(+seq) FROM fragments g "
                        "WHERE g.arn = f.arn AND g.{col} = f.{col})")


class SqliteMetadataStore(SqliteOutbox):
    """The metadata store on SQLite: each guarantee of MetadataStore is one transaction.

    Live readers are woken by this instance's own commits: one process serves a SQLite
    archive (the data directory is locked)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.new_fragments = NewFragments()

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

    def _streams(self, where: str, params: tuple) -> list[Stream]:
        rows = self._connection().execute(
            f"SELECT {', '.join(_STREAM_COLUMNS)} FROM streams WHERE {where}", params
        ).fetchall()
        return [Stream(**dict(row)) for row in rows]

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream | None:
        if arn is not None:
            found = self._streams("arn = ?", (arn,))
        else:
            found = self._streams("name = ? AND status <> ?", (name, DELETING))
        return found[0] if found else None

    def list_streams(self, *, prefix: str, after: str, limit: int) -> list[Stream]:
        # substr() compares the prefix exactly; LIKE would treat _ as a wildcard
        return self._streams(
            "substr(name, 1, length(?)) = ? AND name > ? AND status <> ? ORDER BY name LIMIT ?",
            (prefix, prefix, after, DELETING, limit))

    def update_stream(self, arn: str, expected_version: str, **changes) -> bool:
        unknown = set(changes) - set(_STREAM_COLUMNS)
        if unknown:
            raise ValueError(f"unknown stream fields: {sorted(unknown)}")
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE streams SET {assignments} WHERE arn = ? AND version = ? AND status = ?",
                [*changes.values(), arn, expected_version, ACTIVE],
            )
        return cursor.rowcount == 1

    def mark_deleting(self, arn: str, expected_version: str | None) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE streams SET status = ? WHERE arn = ? AND status = ? "
                "AND (? IS NULL OR version = ?)",
                (DELETING, arn, ACTIVE, expected_version, expected_version))
        return cursor.rowcount == 1

    def deleting_streams(self) -> list[Stream]:
        return self._streams("status = ? ORDER BY arn", (DELETING,))

    def purge_stream(self, arn: str) -> None:
        with self._write() as conn:  # tags, headers and fragments go by ON DELETE CASCADE
            conn.execute("DELETE FROM streams WHERE arn = ?", (arn,))
            for table in ("leases", "lease_epochs"):  # resources are "<kind>:<arn>"
                conn.execute(f"DELETE FROM {table} WHERE substr(resource, -length(?) - 1) "
                             f"= ':' || ?", (arn, arn))

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

    def add_fragment(self, *, fence: Lease | None = None, deliveries=(),
                     **fields) -> tuple[Fragment, bool]:
        arn = fields["arn"]
        with self._write() as conn:
            status = conn.execute("SELECT status FROM streams WHERE arn = ?", (arn,)).fetchone()
            if status is None or status[0] != ACTIVE:
                raise StreamNotActive(arn)
            if fence is not None and not self._holds(conn, fence):
                raise LeaseLost(fence.resource)
            existing = self._fragments_in(conn, "arn = ? AND producer_ms = ? AND digest = ?",
                                          (arn, fields["producer_ms"], fields.get("digest")))
            if existing:
                return existing[0], False
            seq = conn.execute("UPDATE streams SET last_seq = last_seq + 1 WHERE arn = ? "
                               "RETURNING last_seq", (arn,)).fetchone()[0]
            fragment = Fragment(seq=seq, number=fragment_number(seq), **fields)
            row = asdict(fragment)
            conn.execute(f"INSERT INTO fragments ({', '.join(row)}) "
                         f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))
            self._record_deliveries(conn, arn, fragment.number, deliveries)
        self.new_fragments.notify(arn)  # committed: wake this process's live readers
        return fragment, True

    def _fragments_in(self, conn, where: str, params: tuple) -> list[Fragment]:
        rows = conn.execute(f"SELECT {_FRAGMENT_COLUMNS} FROM fragments f WHERE {where}",
                            params).fetchall()
        return [Fragment(**dict(row)) for row in rows]

    def _fragments(self, where: str, params: tuple) -> list[Fragment]:
        return self._fragments_in(self._connection(), where, params)

    def find_fragment(self, arn: str, *, producer_ms: int, digest: bytes) -> Fragment | None:
        found = self._fragments("arn = ? AND producer_ms = ? AND digest = ?",
                                (arn, producer_ms, digest))
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
        for start in range(0, len(numbers), _BATCH):
            batch = numbers[start:start + _BATCH]
            marks = ", ".join("?" for _ in batch)
            for fragment in self._fragments(f"arn = ? AND number IN ({marks})", (arn, *batch)):
                found[fragment.number] = fragment
        return found

    def latest_fragment(self, arn: str) -> Fragment | None:
        found = self._fragments("arn = ? ORDER BY seq DESC LIMIT 1", (arn,))
        return found[0] if found else None

    def fragment_at(self, arn: str, clock: Clock, ms: int, max_duration_ms: int
                    ) -> Fragment | None:
        time_column = _TIME_COLUMNS[clock]
        # the latest-starting fragment whose span holds ms (a longer, earlier one may hold
        # it where a shorter, later one has ended), else the first starting after it
        holding = self._fragments(
            f"arn = ? AND {time_column} BETWEEN ? AND ? AND {time_column} + duration_ms > ? "
            f"ORDER BY {time_column} DESC, seq DESC LIMIT 1",
            (arn, ms - max_duration_ms, ms, ms))
        if holding:
            return holding[0]
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

    def fragments_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                           after: tuple[int, int] | None = None, descending: bool = False,
                           newest_only: bool = False, limit: int) -> list[Fragment]:
        col = _TIME_COLUMNS[clock]
        where, params = f"arn = ? AND {col} BETWEEN ? AND ?", [arn, start_ms, end_ms]
        if after is not None:  # keyset paging: strictly past (start, seq)
            where += f" AND ({col}, seq) {'<' if descending else '>'} (?, ?)"
            params += list(after)
        if newest_only:
            where += _NEWEST_OF_ITS_START.format(col=col)
        order = "DESC" if descending else "ASC"
        return self._fragments(f"{where} ORDER BY {col} {order}, seq {order} LIMIT ?",
                               (*params, limit))

    def count_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                       newest_only: bool = False) -> int:
        col = _TIME_COLUMNS[clock]
        where = f"arn = ? AND {col} BETWEEN ? AND ?"
        if newest_only:
            where += _NEWEST_OF_ITS_START.format(col=col)
        return self._connection().execute(f"SELECT count(*) FROM fragments f WHERE {where}",
                                          (arn, start_ms, end_ms)).fetchone()[0]

    def count_discontinuities(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                              newest_only: bool = False, gap_ms: int | None = None) -> int:
        col = _TIME_COLUMNS[clock]
        where = f"arn = ? AND {col} BETWEEN ? AND ?"
        if newest_only:
            where += _NEWEST_OF_ITS_START.format(col=col)
        gap = ("" if gap_ms is None else
               f" OR abs(start - (prev_start + prev_duration)) > {int(gap_ms)}")
        return self._connection().execute(
            f"SELECT count(*) FROM (SELECT {col} AS start, header_id, "
            f"lag({col}) OVER w AS prev_start, lag(duration_ms) OVER w AS prev_duration, "
            f"lag(header_id) OVER w AS prev_header FROM fragments f WHERE {where} "
            f"WINDOW w AS (ORDER BY {col}, seq)) "
            f"WHERE prev_header IS NOT NULL AND (prev_header <> header_id{gap})",
            (arn, start_ms, end_ms)).fetchone()[0]

    def fragments_received_before(self, arn: str, server_ms: int, limit: int
                                  ) -> list[Fragment]:
        return self._fragments("arn = ? AND server_ms < ? ORDER BY server_ms LIMIT ?",
                               (arn, server_ms, limit))

    def delete_fragments(self, arn: str, seqs: list[int]) -> None:
        with self._write() as conn:
            for start in range(0, len(seqs), _BATCH):
                batch = seqs[start:start + _BATCH]
                conn.execute(f"DELETE FROM fragments WHERE arn = ? AND seq IN "
                             f"({', '.join('?' for _ in batch)})", (arn, *batch))

    def referenced_blobs(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), _BATCH):
            batch = keys[start:start + _BATCH]
            rows = self._connection().execute(
                f"SELECT blob_key FROM fragments WHERE blob_key IN "
                f"({', '.join('?' for _ in batch)})", batch).fetchall()
            found.update(row[0] for row in rows)
        return found

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, resource: str, holder: str, *, limit: int, ttl_ms: int
                      ) -> Lease | None:
        with self._write() as conn:
            now = self._now_ms()
            conn.execute("DELETE FROM leases WHERE resource = ? AND expires_ms <= ?",
                         (resource, now))
            held = conn.execute("SELECT count(*) FROM leases WHERE resource = ?",
                                (resource,)).fetchone()[0]
            if held >= limit:
                return None
            epoch = conn.execute(
                "INSERT INTO lease_epochs (resource, epoch) VALUES (?, 1) "
                "ON CONFLICT (resource) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                (resource,)).fetchone()[0]
            conn.execute("INSERT INTO leases (resource, holder, epoch, expires_ms) "
                         "VALUES (?, ?, ?, ?)", (resource, holder, epoch, now + ttl_ms))
        return Lease(resource, holder, epoch)

    def _holds(self, conn, lease: Lease) -> bool:
        return conn.execute(
            "SELECT 1 FROM leases WHERE resource = ? AND holder = ? AND epoch = ? "
            "AND expires_ms > ?",
            (lease.resource, lease.holder, lease.epoch, self._now_ms())).fetchone() is not None

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        with self._write() as conn:
            now = self._now_ms()
            cursor = conn.execute(
                "UPDATE leases SET expires_ms = ? WHERE resource = ? AND holder = ? "
                "AND epoch = ? AND expires_ms > ?",
                (now + ttl_ms, lease.resource, lease.holder, lease.epoch, now))
        return cursor.rowcount == 1

    def release_lease(self, lease: Lease) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE resource = ? AND holder = ? AND epoch = ?",
                         (lease.resource, lease.holder, lease.epoch))

    def count_leases(self, resource: str) -> int:
        return self._connection().execute(
            "SELECT count(*) FROM leases WHERE resource = ? AND expires_ms > ?",
            (resource, self._now_ms())).fetchone()[0]

    # -- secrets ---------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                         (name, secrets.token_bytes(32)))
            return conn.execute("SELECT value FROM secrets WHERE name = ?",
                                (name,)).fetchone()[0]
