"""The metadata store on PostgreSQL, for kvslite running as several nodes on one database.

It mirrors the SQLite store (`sqlite`): the same records, return values and exceptions.
Each guarantee of `MetadataStore` is one READ COMMITTED transaction whose first statement
locks the row the guarantee is about, so writers on any thread, process or node queue on
that row, and each statement after it reads what the writer before committed:

- add_fragment: `UPDATE streams SET last_seq = last_seq + 1 ... AND status = 'ACTIVE'`
  takes the seq, checks ACTIVE and locks the stream; under that lock it checks the fence
  (locking the lease row: no acquire can take the lease over before this commits) and
  looks for a resend, which rolls back, giving the seq back: seqs have no gaps.
- put_tags and save_header lock the stream row before reading what they decide on;
  acquire_lease locks the resource's lease_epochs row (an upsert) before counting.
- names: a partial unique index; versions: `UPDATE ... WHERE version = %s`.

Lease times are the database's clock (`clock_timestamp()`), so nodes with skewed clocks
agree on when a lease expires, unless a `clock` is injected (tests). Connections,
transactions and the migration are postgres_db's.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, fields

import psycopg

from kvslite.server.store.metadata import (ACTIVE, DELETING, Clock, Fragment, Lease, LeaseLost,
                                    NameTaken, Stream, StreamNotActive, fragment_number)
from kvslite.server.store.postgres_db import NOW
from kvslite.server.store.postgres_outbox import PostgresOutbox
from kvslite.server.store.postgres_listen import NOTIFY_SQL

_STREAM_COLUMNS = [f.name for f in fields(Stream)]
_FRAGMENT_COLUMNS = ", ".join(f.name for f in fields(Fragment))
_TIME_COLUMNS = {Clock.PRODUCER: "producer_ms", Clock.SERVER: "server_ms"}


def _starting(col: str, newest_only: bool) -> str:
    """Fragments `f` of a stream starting in a range on the clock of time column `col`;
    `newest_only`: only the newest of each start (AWS's rule for the producer clock)."""
    return f"arn = %s AND {col} BETWEEN %s AND %s" + (
        f" AND seq = (SELECT max(seq) FROM fragments g WHERE g.arn = f.arn "
        f"AND g.{col} = f.{col})" if newest_only else "")


class PostgresMetadataStore(PostgresOutbox):
    """The metadata store on PostgreSQL: each guarantee of MetadataStore is one transaction."""

    # -- streams ---------------------------------------------------------------------

    def create_stream(self, stream: Stream, tags: dict[str, str]) -> None:
        row = asdict(stream)
        try:
            with self._write() as conn:
                conn.execute(f"INSERT INTO streams ({', '.join(row)}) "
                             f"VALUES ({', '.join('%s' for _ in row)})", list(row.values()))
                conn.cursor().executemany("INSERT INTO tags (arn, key, value) "
                                          "VALUES (%s, %s, %s)",
                                          [(stream.arn, k, v) for k, v in tags.items()])
        except psycopg.errors.IntegrityError as e:
            raise NameTaken(stream.name) from e

    def _streams(self, where: str, params: tuple) -> list[Stream]:
        return [Stream(**row) for row in self._rows(
            f"SELECT {', '.join(_STREAM_COLUMNS)} FROM streams WHERE {where}", params)]

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream | None:
        if arn is not None:
            found = self._streams("arn = %s", (arn,))
        else:
            found = self._streams("name = %s AND status <> %s", (name, DELETING))
        return found[0] if found else None

    def list_streams(self, *, prefix: str, after: str, limit: int) -> list[Stream]:
        # left() compares the prefix exactly; LIKE would treat _ and % as wildcards
        return self._streams(
            "left(name, %s) = %s AND name > %s AND status <> %s ORDER BY name LIMIT %s",
            (len(prefix), prefix, after, DELETING, limit))

    def update_stream(self, arn: str, expected_version: str, **changes) -> bool:
        unknown = set(changes) - set(_STREAM_COLUMNS)
        if unknown:
            raise ValueError(f"unknown stream fields: {sorted(unknown)}")
        assignments = ", ".join(f"{column} = %s" for column in changes)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE streams SET {assignments} "
                f"WHERE arn = %s AND version = %s AND status = %s",
                [*changes.values(), arn, expected_version, ACTIVE])
            return cursor.rowcount == 1

    def mark_deleting(self, arn: str, expected_version: str | None) -> bool:
        sql, params = "UPDATE streams SET status = %s WHERE arn = %s AND status = %s", \
            [DELETING, arn, ACTIVE]
        if expected_version is not None:  # (a NULL parameter would have no type)
            sql, params = sql + " AND version = %s", params + [expected_version]
        with self._write() as conn:
            return conn.execute(sql, params).rowcount == 1

    def deleting_streams(self) -> list[Stream]:
        return self._streams("status = %s ORDER BY arn", (DELETING,))

    def purge_stream(self, arn: str) -> None:
        suffix = ":" + arn  # lease resources are "<kind>:<arn>"
        with self._write() as conn:  # tags, headers and fragments go by ON DELETE CASCADE
            conn.execute("DELETE FROM streams WHERE arn = %s", (arn,))
            for table in ("leases", "lease_epochs"):
                conn.execute(f"DELETE FROM {table} WHERE right(resource, %s) = %s",
                             (len(suffix), suffix))

    # -- tags ------------------------------------------------------------------------

    def get_tags(self, arn: str) -> dict[str, str]:
        rows = self._rows("SELECT key, value FROM tags WHERE arn = %s ORDER BY key", (arn,))
        return {row["key"]: row["value"] for row in rows}

    def _lock_stream(self, conn, arn: str) -> None:
        """Lock the stream's row until the transaction ends (none for an unknown ARN:
        writes for it then fail on the foreign key, as SQLite's do)."""
        conn.execute("SELECT 1 FROM streams WHERE arn = %s FOR NO KEY UPDATE", (arn,))

    def put_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        with self._write() as conn:
            self._lock_stream(conn, arn)  # concurrent put_tags count one after another
            existing = {row["key"] for row in conn.execute(
                "SELECT key FROM tags WHERE arn = %s", (arn,))}
            if len(existing | set(tags)) > max_tags:
                return False
            conn.cursor().executemany(
                "INSERT INTO tags (arn, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (arn, key) DO UPDATE SET value = excluded.value",
                [(arn, k, v) for k, v in tags.items()])
        return True

    def delete_tags(self, arn: str, keys: list[str]) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM tags WHERE arn = %s AND key = ANY(%s::text[])",
                         (arn, list(keys)))

    # -- fragments -------------------------------------------------------------------

    def save_header(self, arn: str, data: bytes) -> int:
        with self._write() as conn:
            self._lock_stream(conn, arn)  # two identical saves at once make one row
            row = conn.execute("SELECT id, data FROM headers WHERE arn = %s "
                               "ORDER BY id DESC LIMIT 1", (arn,)).fetchone()
            if row and row["data"] == data:
                return row["id"]
            return conn.execute("INSERT INTO headers (arn, data) VALUES (%s, %s) "
                                "RETURNING id", (arn, data)).fetchone()["id"]

    def get_header(self, header_id: int) -> bytes:
        rows = self._rows("SELECT data FROM headers WHERE id = %s", (header_id,))
        if not rows:
            raise KeyError(header_id)
        return rows[0]["data"]

    def add_fragment(self, *, fence: Lease | None = None, deliveries=(),
                     **fields) -> tuple[Fragment, bool]:
        arn = fields["arn"]
        resent: Fragment | None = None
        with self._write() as conn:
            # takes the next seq, checks ACTIVE and locks the stream's row, in one statement
            row = conn.execute("UPDATE streams SET last_seq = last_seq + 1 "
                               "WHERE arn = %s AND status = %s RETURNING last_seq",
                               (arn, ACTIVE)).fetchone()
            if row is None:
                raise StreamNotActive(arn)
            if fence is not None and not self._holds(conn, fence):
                raise LeaseLost(fence.resource)
            existing = self._fragments_in(
                conn, "arn = %s AND producer_ms = %s AND digest = %s",
                (arn, fields["producer_ms"], fields.get("digest")))
            if existing:
                resent = existing[0]
                raise psycopg.Rollback()  # gives the seq back; leaves the block
            seq = row["last_seq"]
            fragment = Fragment(seq=seq, number=fragment_number(seq), **fields)
            values = asdict(fragment)
            conn.execute(f"INSERT INTO fragments ({', '.join(values)}) "
                         f"VALUES ({', '.join('%s' for _ in values)})", list(values.values()))
            self._record_deliveries(conn, arn, fragment.number, deliveries)
            conn.execute(NOTIFY_SQL, (arn,))  # delivered to every node on commit
        if resent is not None:
            return resent, False
        return fragment, True

    def _fragments_in(self, conn, where: str, params) -> list[Fragment]:
        rows = conn.execute(f"SELECT {_FRAGMENT_COLUMNS} FROM fragments f WHERE {where}",
                            params).fetchall()
        return [Fragment(**row) for row in rows]

    def _fragments(self, where: str, params) -> list[Fragment]:
        with self._connection() as conn:
            return self._fragments_in(conn, where, params)

    def find_fragment(self, arn: str, *, producer_ms: int, digest: bytes) -> Fragment | None:
        found = self._fragments("arn = %s AND producer_ms = %s AND digest = %s",
                                (arn, producer_ms, digest))
        return found[0] if found else None

    def list_fragments(self, arn: str, *, clock: Clock | None = None, start_ms: int = 0,
                       end_ms: int = 0, after_seq: int = 0, limit: int) -> list[Fragment]:
        if clock is None:
            return self._fragments("arn = %s AND seq > %s ORDER BY seq LIMIT %s",
                                   (arn, after_seq, limit))
        col = _TIME_COLUMNS[clock]
        return self._fragments(
            f"arn = %s AND {col} BETWEEN %s AND %s AND seq > %s ORDER BY seq LIMIT %s",
            (arn, start_ms, end_ms, after_seq, limit))

    def fragments_by_number(self, arn: str, numbers: list[str]) -> dict[str, Fragment]:
        found = self._fragments("arn = %s AND number = ANY(%s::text[])", (arn, list(numbers)))
        return {fragment.number: fragment for fragment in found}

    def latest_fragment(self, arn: str) -> Fragment | None:
        found = self._fragments("arn = %s ORDER BY seq DESC LIMIT 1", (arn,))
        return found[0] if found else None

    def fragment_at(self, arn: str, clock: Clock, ms: int, max_duration_ms: int
                    ) -> Fragment | None:
        col = _TIME_COLUMNS[clock]
        # the latest-starting fragment whose span holds ms (a longer, earlier one may hold
        # it where a shorter, later one has ended), else the first starting after it
        holding = self._fragments(
            f"arn = %s AND {col} BETWEEN %s AND %s AND {col} + duration_ms > %s "
            f"ORDER BY {col} DESC, seq DESC LIMIT 1",
            (arn, ms - max_duration_ms, ms, ms))
        if holding:
            return holding[0]
        after = self._fragments(f"arn = %s AND {col} > %s ORDER BY {col}, seq LIMIT 1",
                                (arn, ms))
        return after[0] if after else None

    def fragments_overlapping(self, arn: str, clock: Clock, start_ms: int, end_ms: int,
                              max_duration_ms: int) -> list[Fragment]:
        col = _TIME_COLUMNS[clock]
        # the lower bound on the start keeps the index useful; no fragment is longer
        return self._fragments(
            f"arn = %s AND {col} BETWEEN %s AND %s AND {col} + duration_ms > %s "
            f"ORDER BY {col}, seq",
            (arn, start_ms - max_duration_ms, end_ms, start_ms))

    def fragments_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                           after: tuple[int, int] | None = None, descending: bool = False,
                           newest_only: bool = False, limit: int) -> list[Fragment]:
        col = _TIME_COLUMNS[clock]
        where, params = _starting(col, newest_only), [arn, start_ms, end_ms]
        if after is not None:  # keyset paging: strictly past (start, seq)
            where += f" AND ({col}, seq) {'<' if descending else '>'} (%s, %s)"
            params += list(after)
        order = "DESC" if descending else "ASC"
        return self._fragments(f"{where} ORDER BY {col} {order}, seq {order} LIMIT %s",
                               (*params, limit))

    def count_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                       newest_only: bool = False) -> int:
        where = _starting(_TIME_COLUMNS[clock], newest_only)
        return self._rows(f"SELECT count(*) FROM fragments f WHERE {where}",
                          (arn, start_ms, end_ms))[0]["count"]

    def count_discontinuities(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                              newest_only: bool = False, gap_ms: int | None = None) -> int:
        col = _TIME_COLUMNS[clock]
        where = _starting(col, newest_only)
        gap = ("" if gap_ms is None else
               f" OR abs(start - (prev_start + prev_duration)) > {int(gap_ms)}")
        return self._rows(
            f"SELECT count(*) FROM (SELECT {col} AS start, header_id, "
            f"lag({col}) OVER w AS prev_start, lag(duration_ms) OVER w AS prev_duration, "
            f"lag(header_id) OVER w AS prev_header FROM fragments f WHERE {where} "
            f"WINDOW w AS (ORDER BY {col}, seq)) AS d "
            f"WHERE prev_header IS NOT NULL AND (prev_header <> header_id{gap})",
            (arn, start_ms, end_ms))[0]["count"]

    def fragments_received_before(self, arn: str, server_ms: int, limit: int
                                  ) -> list[Fragment]:
        # seq breaks ties of server_ms, which SQLite leaves to its scan order (seq there)
        return self._fragments(
            "arn = %s AND server_ms < %s ORDER BY server_ms, seq LIMIT %s",
            (arn, server_ms, limit))

    def delete_fragments(self, arn: str, seqs: list[int]) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM fragments WHERE arn = %s AND seq = ANY(%s::bigint[])",
                         (arn, list(seqs)))

    def referenced_blobs(self, keys: list[str]) -> set[str]:
        rows = self._rows("SELECT DISTINCT blob_key FROM fragments "
                          "WHERE blob_key = ANY(%s::text[])", (list(keys),))
        return {row["blob_key"] for row in rows}

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, resource: str, holder: str, *, limit: int, ttl_ms: int
                      ) -> Lease | None:
        with self._write() as conn:
            # lock the resource: acquires on it run one after another from here
            conn.execute("INSERT INTO lease_epochs (resource, epoch) VALUES (%s, 0) "
                         "ON CONFLICT (resource) DO UPDATE SET epoch = lease_epochs.epoch",
                         (resource,))
            now = {"resource": resource, "now": self._now_ms()}
            conn.execute(f"DELETE FROM leases WHERE resource = %(resource)s "
                         f"AND expires_ms <= {NOW}", now)
            held = conn.execute("SELECT count(*) AS held FROM leases WHERE resource = %s",
                                (resource,)).fetchone()["held"]
            if held >= limit:
                return None
            epoch = conn.execute("UPDATE lease_epochs SET epoch = epoch + 1 "
                                 "WHERE resource = %s RETURNING epoch",
                                 (resource,)).fetchone()["epoch"]
            conn.execute(f"INSERT INTO leases (resource, holder, epoch, expires_ms) "
                         f"VALUES (%(resource)s, %(holder)s, %(epoch)s, {NOW} + %(ttl)s)",
                         {**now, "holder": holder, "epoch": epoch, "ttl": ttl_ms})
        return Lease(resource, holder, epoch)

    def _holds(self, conn, lease: Lease) -> bool:
        """Whether `lease` is live; its row stays locked until the transaction ends, so no
        acquire can drop it (and take the slot over) before this commits."""
        return conn.execute(
            f"SELECT 1 FROM leases WHERE resource = %(resource)s AND holder = %(holder)s "
            f"AND epoch = %(epoch)s AND expires_ms > {NOW} FOR KEY SHARE",
            {**asdict(lease), "now": self._now_ms()}).fetchone() is not None

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE leases SET expires_ms = {NOW} + %(ttl)s "
                f"WHERE resource = %(resource)s AND holder = %(holder)s "
                f"AND epoch = %(epoch)s AND expires_ms > {NOW}",
                {**asdict(lease), "now": self._now_ms(), "ttl": ttl_ms})
            return cursor.rowcount == 1

    def release_lease(self, lease: Lease) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE resource = %s AND holder = %s "
                         "AND epoch = %s", (lease.resource, lease.holder, lease.epoch))

    def count_leases(self, resource: str) -> int:
        return self._rows(f"SELECT count(*) AS n FROM leases WHERE resource = %(resource)s "
                          f"AND expires_ms > {NOW}",
                          {"resource": resource, "now": self._now_ms()})[0]["n"]

    # -- secrets ---------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        with self._write() as conn:
            # a concurrent first insert of the name waits for the other, then does nothing
            conn.execute("INSERT INTO secrets (name, value) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO NOTHING", (name, secrets.token_bytes(32)))
            return conn.execute("SELECT value FROM secrets WHERE name = %s",
                                (name,)).fetchone()["value"]
