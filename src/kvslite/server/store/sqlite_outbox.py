"""The SQLite store's event configurations and delivery outbox (see MetadataStore)."""

from __future__ import annotations

from kvslite.server.store.metadata import Delivery
from kvslite.server.store.sqlite_db import SqliteDatabase

_DELIVERY_COLUMNS = "id, arn, fragment_number, kind, event, attempts"
# Each destination's (stream and kind's) oldest due delivery, for destinations that are
# neither busy (a delivery claimed) nor parked (a failed one waiting out its backoff).
NEXT_PER_DESTINATION = (
    "SELECT min(id) FROM deliveries WHERE due_ms <= :now AND claimed_until_ms <= :now "
    "AND (arn, kind) NOT IN (SELECT arn, kind FROM deliveries WHERE claimed_until_ms > :now "
    "OR (attempts > 0 AND due_ms > :now)) GROUP BY arn, kind")


class SqliteOutbox(SqliteDatabase):
    def get_stream_config(self, arn: str, kind: str) -> str | None:
        row = self._connection().execute(
            "SELECT config FROM stream_configs WHERE arn = ? AND kind = ?", (arn, kind)
        ).fetchone()
        return row[0] if row else None

    def put_stream_config(self, arn: str, kind: str, config: str | None) -> None:
        with self._write() as conn:
            if config is None:
                conn.execute("DELETE FROM stream_configs WHERE arn = ? AND kind = ?",
                             (arn, kind))
            else:
                conn.execute("INSERT INTO stream_configs (arn, kind, config) VALUES (?, ?, ?) "
                             "ON CONFLICT (arn, kind) DO UPDATE SET config = excluded.config",
                             (arn, kind, config))

    @staticmethod
    def _record_deliveries(conn, arn: str, number: str, deliveries) -> None:
        """In the caller's transaction: the fragment's deliveries, due at once."""
        conn.executemany("INSERT INTO deliveries (arn, fragment_number, kind, event) "
                         "VALUES (?, ?, ?, ?)",
                         [(arn, number, kind, event) for kind, event in deliveries])

    def count_deliveries(self, arn: str | None = None) -> int:
        if arn is None:
            return self._connection().execute("SELECT count(*) FROM deliveries").fetchone()[0]
        return self._connection().execute(
            "SELECT count(*) FROM deliveries WHERE arn = ?", (arn,)).fetchone()[0]

    def count_delivery_streams(self) -> int:
        return self._connection().execute(
            "SELECT count(DISTINCT arn) FROM deliveries").fetchone()[0]

    def claim_deliveries(self, limit: int, claim_ms: int) -> list[Delivery]:
        now = self._now_ms()
        with self._write() as conn:  # BEGIN IMMEDIATE: one claimer at a time
            rows = conn.execute(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id IN "
                                f"({NEXT_PER_DESTINATION}) ORDER BY attempts, id LIMIT :limit",
                                {"now": now, "limit": limit}).fetchall()
            conn.executemany("UPDATE deliveries SET claimed_until_ms = ? WHERE id = ?",
                             [(now + claim_ms, row["id"]) for row in rows])
        return [Delivery(**dict(row)) for row in rows]

    def finish_delivery(self, delivery_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def retry_delivery(self, delivery_id: int, delay_ms: int, error: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE deliveries SET attempts = attempts + 1, due_ms = ?, "
                         "claimed_until_ms = 0, last_error = ? WHERE id = ?",
                         (self._now_ms() + delay_ms, error[:1000], delivery_id))
