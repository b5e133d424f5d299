"""Event configurations and the delivery outbox, for both SQL stores (see MetadataStore).

Workers claim due deliveries with FOR UPDATE SKIP LOCKED on PostgreSQL, so two nodes never
take the same row; on SQLite a claim is one write transaction, one claimer at a time. A
claim that lapses (its worker died) makes the row due again.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from kvslite.server.store.database import SqlDatabase
from kvslite.server.store.metadata import Delivery
from kvslite.server.store.schema import deliveries, stream_configs

d = deliveries.c
_CONFIG_KEY = ("arn", "kind")


class SqlOutbox(SqlDatabase):
    def get_stream_config(self, arn: str, kind: str) -> str | None:
        with self._read() as conn:
            return conn.execute(sa.select(stream_configs.c.config).where(
                stream_configs.c.arn == arn, stream_configs.c.kind == kind)).scalar()

    def put_stream_config(self, arn: str, kind: str, config: str | None) -> None:
        with self._write() as conn:
            if config is None:
                conn.execute(sa.delete(stream_configs).where(
                    stream_configs.c.arn == arn, stream_configs.c.kind == kind))
                return
            upsert = self.insert(stream_configs).values(arn=arn, kind=kind, config=config)
            conn.execute(upsert.on_conflict_do_update(
                index_elements=_CONFIG_KEY, set_={"config": upsert.excluded.config}))

    @staticmethod
    def _record_deliveries(conn: sa.Connection, arn: str, number: str,
                           events: Iterable[tuple[str, str]]) -> None:
        """In the caller's transaction: the fragment's deliveries, due at once."""
        rows = [{"arn": arn, "fragment_number": number, "kind": kind, "event": event}
                for kind, event in events]
        if rows:
            conn.execute(sa.insert(deliveries), rows)

    def count_deliveries(self, arn: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(deliveries)
        if arn is not None:
            query = query.where(d.arn == arn)
        with self._read() as conn:
            return conn.execute(query).scalar_one()

    def count_delivery_streams(self) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count(sa.distinct(d.arn)))).scalar_one()

    def claim_deliveries(self, limit: int, claim_ms: int) -> list[Delivery]:
        now = self.NOW
        due = sa.and_(d.due_ms <= now, d.claimed_until_ms <= now)
        # destinations (a stream and kind) that are busy (a delivery claimed) or parked (a
        # failed one waiting out its backoff) get nothing now
        held = sa.select(d.arn, d.kind).where(
            sa.or_(d.claimed_until_ms > now, sa.and_(d.attempts > 0, d.due_ms > now))
        ).correlate(None)  # subqueries of the same table: each reads all of it
        # each other destination's oldest due delivery
        heads = sa.select(sa.func.min(d.id)).where(
            due, sa.tuple_(d.arn, d.kind).not_in(held)).group_by(d.arn, d.kind).correlate(None)
        # the due conditions again at the locking level: a row another node claimed
        # meanwhile is rechecked there, once its lock is released
        chosen = (sa.select(d.id).where(d.id.in_(heads), due).order_by(d.attempts, d.id)
                  .limit(limit).with_for_update(skip_locked=True).correlate(None))
        with self._write() as conn:
            rows = conn.execute(
                sa.update(deliveries).where(d.id.in_(chosen))
                .values(claimed_until_ms=now + claim_ms)
                .returning(d.id, d.arn, d.fragment_number, d.kind, d.event, d.attempts),
                {"now": self._now_ms()}).all()
        claimed = [Delivery(id=row.id, arn=row.arn, fragment_number=row.fragment_number,
                            kind=row.kind, event=row.event, attempts=row.attempts)
                   for row in rows]
        return sorted(claimed, key=lambda delivery: (delivery.attempts, delivery.id))

    def finish_delivery(self, delivery_id: int) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(deliveries).where(d.id == delivery_id))

    def retry_delivery(self, delivery_id: int, delay_ms: int, error: str) -> None:
        with self._write() as conn:
            conn.execute(sa.update(deliveries).where(d.id == delivery_id).values(
                attempts=d.attempts + 1, due_ms=self.NOW + delay_ms, claimed_until_ms=0,
                last_error=error[:1000]), {"now": self._now_ms()})
