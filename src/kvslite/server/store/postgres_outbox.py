"""The PostgreSQL store's event configurations and delivery outbox (see MetadataStore).

Workers on every node claim due deliveries with FOR UPDATE SKIP LOCKED, so two nodes never
take the same row, and a claim that lapses (its node died) makes the row due again."""

from __future__ import annotations

from kvslite.server.store.metadata import Delivery
from kvslite.server.store.postgres_db import NOW, PostgresDatabase

_DELIVERY_COLUMNS = "id, arn, fragment_number, kind, event, attempts"
# Each destination's (stream and kind's) oldest due delivery, for destinations that are
# neither busy (a delivery claimed) nor parked (a failed one waiting out its backoff).
NEXT_PER_DESTINATION = (
    f"SELECT min(id) FROM deliveries WHERE due_ms <= {NOW} AND claimed_until_ms <= {NOW} "
    f"AND (arn, kind) NOT IN (SELECT arn, kind FROM deliveries "
    f"WHERE claimed_until_ms > {NOW} OR (attempts > 0 AND due_ms > {NOW})) GROUP BY arn, kind")


class PostgresOutbox(PostgresDatabase):
    def get_stream_config(self, arn: str, kind: str) -> str | None:
        rows = self._rows("SELECT config FROM stream_configs WHERE arn = %s AND kind = %s",
                          (arn, kind))
        return rows[0]["config"] if rows else None

    def put_stream_config(self, arn: str, kind: str, config: str | None) -> None:
        with self._write() as conn:
            if config is None:
                conn.execute("DELETE FROM stream_configs WHERE arn = %s AND kind = %s",
                             (arn, kind))
            else:
                conn.execute("INSERT INTO stream_configs (arn, kind, config) "
                             "VALUES (%s, %s, %s) ON CONFLICT (arn, kind) "
                             "DO UPDATE SET config = excluded.config", (arn, kind, config))

    @staticmethod
    def _record_deliveries(conn, arn: str, number: str, deliveries) -> None:
        """In the caller's transaction: the fragment's deliveries, due at once."""
        if deliveries:
            conn.cursor().executemany(
                "INSERT INTO deliveries (arn, fragment_number, kind, event) "
                "VALUES (%s, %s, %s, %s)",
                [(arn, number, kind, event) for kind, event in deliveries])

    def count_deliveries(self, arn: str | None = None) -> int:
        if arn is None:
            return self._rows("SELECT count(*) AS n FROM deliveries")[0]["n"]
        return self._rows("SELECT count(*) AS n FROM deliveries WHERE arn = %s", (arn,))[0]["n"]

    def count_delivery_streams(self) -> int:
        return self._rows("SELECT count(DISTINCT arn) AS n FROM deliveries")[0]["n"]

    def claim_deliveries(self, limit: int, claim_ms: int) -> list[Delivery]:
        # the due and claim conditions are repeated at the locking level: a row another
        # node claimed meanwhile is rechecked there, after its lock is released
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE deliveries SET claimed_until_ms = {NOW} + %(claim)s "
                f"WHERE id IN (SELECT id FROM deliveries WHERE id IN ({NEXT_PER_DESTINATION}) "
                f"AND due_ms <= {NOW} AND claimed_until_ms <= {NOW} "
                f"ORDER BY attempts, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_DELIVERY_COLUMNS}",
                {"now": self._now_ms(), "claim": claim_ms, "limit": limit}).fetchall()
        return sorted((Delivery(**row) for row in rows), key=lambda d: (d.attempts, d.id))

    def finish_delivery(self, delivery_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM deliveries WHERE id = %s", (delivery_id,))

    def retry_delivery(self, delivery_id: int, delay_ms: int, error: str) -> None:
        with self._write() as conn:
            conn.execute(f"UPDATE deliveries SET attempts = attempts + 1, "
                         f"due_ms = {NOW} + %(delay)s, claimed_until_ms = 0, "
                         f"last_error = %(error)s WHERE id = %(id)s",
                         {"now": self._now_ms(), "delay": delay_ms, "error": error[:1000],
                          "id": delivery_id})
