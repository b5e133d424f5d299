"""The fragment index's reads and deletes, written once for SQLite and PostgreSQL.

Fragments are found by seq, by number, by content, or by time on one of two clocks
(`Clock`: the producer's timestamps or the server's receipt time); ties of time always go
by seq, so both engines answer every query alike, row for row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from kvslite.server.store.metadata import Clock, Fragment, seq_of
from kvslite.server.store.schema import fragments
from kvslite.server.store.sql_outbox import SqlOutbox

f = fragments.c
_FRAGMENT_COLUMNS = (f.arn, f.seq, f.number, f.producer_ms, f.server_ms, f.duration_ms, f.size,
                     f.header_id, f.blob_key, f.frames, f.digest)
_TIME_COLUMNS = {Clock.PRODUCER: f.producer_ms, Clock.SERVER: f.server_ms}
_BATCH = 500  # keys per IN list: well under either engine's limit on bound parameters
_SELECT = sa.select(*_FRAGMENT_COLUMNS)
_OF_STREAM = f.arn == sa.bindparam("arn")

# Built once (see database.py): what ingest and live readers ask for every fragment.
BY_CONTENT = _SELECT.where(_OF_STREAM, f.producer_ms == sa.bindparam("producer_ms"),
                           f.digest == sa.bindparam("digest"))
_LATEST = _SELECT.where(_OF_STREAM).order_by(f.seq.desc()).limit(1)
_AFTER_SEQ = _SELECT.where(_OF_STREAM, f.seq > sa.bindparam("after_seq"))
_BY_SEQ = {None: _AFTER_SEQ} | {
    clock: _AFTER_SEQ.where(time.between(sa.bindparam("start_ms"), sa.bindparam("end_ms")))
    for clock, time in _TIME_COLUMNS.items()}
_BY_SEQ = {clock: query.order_by(f.seq).limit(sa.bindparam("limit"))
           for clock, query in _BY_SEQ.items()}


def fragment_of(row: Sequence) -> Fragment:
    """A row of _FRAGMENT_COLUMNS as a Fragment."""
    (arn, seq, number, producer_ms, server_ms, duration_ms, size, header_id, blob_key, frames,
     digest) = row
    return Fragment(arn=arn, seq=seq, number=number, producer_ms=producer_ms,
                    server_ms=server_ms, duration_ms=duration_ms, size=size,
                    header_id=header_id, blob_key=blob_key, frames=frames, digest=digest)


def _starting(arn: str, clock: Clock, start_ms: int, end_ms: int,
              newest_only: bool) -> list[sa.ColumnElement[bool]]:
    """A stream's fragments starting in [start_ms, end_ms] on the clock; `newest_only`:
    only the newest of each start (AWS's rule for the producer clock)."""
    time = _TIME_COLUMNS[clock]
    where = [f.arn == arn, time.between(start_ms, end_ms)]
    if newest_only:
        g = fragments.alias("g")
        # "+ 0" keeps SQLite on the (arn, start) index instead of walking the seq key
        where.append(f.seq == sa.select(sa.func.max(g.c.seq + 0)).where(
            g.c.arn == f.arn, g.c[time.name] == time).scalar_subquery())
    return where


class FragmentQueries(SqlOutbox):
    def _run(self, query: sa.Select, **params) -> list[Fragment]:
        """A query built once (see database.py)."""
        with self._read() as conn:
            return [fragment_of(row) for row in self._run_compiled(conn, query, **params)]

    def _fragments(self, *where: sa.ColumnElement[bool],
                   order_by: Sequence[sa.ColumnElement] = (),
                   limit: int | None = None) -> list[Fragment]:
        query = _SELECT.where(*where).order_by(*order_by).limit(limit)
        with self._read() as conn:
            return [fragment_of(row) for row in conn.execute(query)]

    def find_fragment(self, arn: str, *, producer_ms: int, digest: bytes) -> Fragment | None:
        found = self._run(BY_CONTENT, arn=arn, producer_ms=producer_ms, digest=digest)
        return found[0] if found else None

    def list_fragments(self, arn: str, *, clock: Clock | None = None, start_ms: int = 0,
                       end_ms: int = 0, after_seq: int = 0, limit: int) -> list[Fragment]:
        return self._run(_BY_SEQ[clock], arn=arn, after_seq=after_seq, start_ms=start_ms,
                         end_ms=end_ms, limit=limit)

    def fragments_by_number(self, arn: str, numbers: list[str]) -> dict[str, Fragment]:
        """Found through the primary key: a number is its fragment's seq (seq_of), so it
        needs no index of its own, which every fragment's commit would write."""
        by_seq = {seq: number for number in numbers if (seq := seq_of(number)) is not None}
        seqs = list(by_seq)
        found: dict[str, Fragment] = {}
        for start in range(0, len(seqs), _BATCH):
            batch = seqs[start:start + _BATCH]
            for fragment in self._fragments(f.arn == arn, f.seq.in_(batch)):
                found[by_seq[fragment.seq]] = fragment
        return found

    def latest_fragment(self, arn: str) -> Fragment | None:
        found = self._run(_LATEST, arn=arn)
        return found[0] if found else None

    def fragment_at(self, arn: str, clock: Clock, ms: int, max_duration_ms: int
                    ) -> Fragment | None:
        time = _TIME_COLUMNS[clock]
        # the latest-starting fragment whose span holds ms (a longer, earlier one may hold
        # it where a shorter, later one has ended), else the first starting after it
        holding = self._fragments(
            f.arn == arn, time.between(ms - max_duration_ms, ms), time + f.duration_ms > ms,
            order_by=[time.desc(), f.seq.desc()], limit=1)
        if holding:
            return holding[0]
        after = self._fragments(f.arn == arn, time > ms, order_by=[time, f.seq], limit=1)
        return after[0] if after else None

    def fragments_overlapping(self, arn: str, clock: Clock, start_ms: int, end_ms: int,
                              max_duration_ms: int) -> list[Fragment]:
        time = _TIME_COLUMNS[clock]
        # the lower bound on the start keeps the index useful; no fragment is longer
        return self._fragments(
            f.arn == arn, time.between(start_ms - max_duration_ms, end_ms),
            time + f.duration_ms > start_ms, order_by=[time, f.seq])

    def fragments_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                           after: tuple[int, int] | None = None, descending: bool = False,
                           newest_only: bool = False, limit: int) -> list[Fragment]:
        time = _TIME_COLUMNS[clock]
        where = _starting(arn, clock, start_ms, end_ms, newest_only)
        if after is not None:  # keyset paging: strictly past (start, seq)
            key, past = sa.tuple_(time, f.seq), sa.tuple_(*after)
            where.append(key < past if descending else key > past)
        order = [time.desc(), f.seq.desc()] if descending else [time, f.seq]
        return self._fragments(*where, order_by=order, limit=limit)

    def count_starting(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                       newest_only: bool = False) -> int:
        query = sa.select(sa.func.count()).select_from(fragments).where(
            *_starting(arn, clock, start_ms, end_ms, newest_only))
        with self._read() as conn:
            return conn.execute(query).scalar_one()

    def count_discontinuities(self, arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                              newest_only: bool = False, gap_ms: int | None = None) -> int:
        time = _TIME_COLUMNS[clock]
        in_order = (time, f.seq)
        runs = sa.select(
            time.label("start"), f.header_id,
            sa.func.lag(time).over(order_by=in_order).label("prev_start"),
            sa.func.lag(f.duration_ms).over(order_by=in_order).label("prev_duration"),
            sa.func.lag(f.header_id).over(order_by=in_order).label("prev_header"),
        ).where(*_starting(arn, clock, start_ms, end_ms, newest_only)).subquery("runs")
        breaks = runs.c.prev_header != runs.c.header_id  # other codec data
        if gap_ms is not None:
            ended = runs.c.prev_start + runs.c.prev_duration
            breaks = sa.or_(breaks, sa.func.abs(runs.c.start - ended) > gap_ms)
        query = sa.select(sa.func.count()).select_from(runs).where(
            runs.c.prev_header.is_not(None), breaks)
        with self._read() as conn:
            return conn.execute(query).scalar_one()

    def fragments_received_before(self, arn: str, server_ms: int, limit: int
                                  ) -> list[Fragment]:
        return self._fragments(f.arn == arn, f.server_ms < server_ms,
                               order_by=[f.server_ms, f.seq], limit=limit)

    def delete_fragments(self, arn: str, seqs: list[int]) -> None:
        with self._write() as conn:
            for start in range(0, len(seqs), _BATCH):
                conn.execute(sa.delete(fragments).where(
                    f.arn == arn, f.seq.in_(seqs[start:start + _BATCH])))

    def referenced_blobs(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(keys), _BATCH):
                found.update(conn.execute(sa.select(f.blob_key).distinct().where(
                    f.blob_key.in_(keys[start:start + _BATCH]))).scalars())
        return found
