"""The metadata store's queries, written once for SQLite and PostgreSQL (SQLAlchemy Core).

Each guarantee of `MetadataStore` is one transaction (`_write()`) whose first statement
takes the row the guarantee is about: on SQLite the whole database is locked from BEGIN
(one writer at a time across threads and processes); on PostgreSQL that statement locks
the row, so writers on any thread, process or node queue on it, and each statement after
it reads what the writer before committed (READ COMMITTED):

- add_fragment: `UPDATE streams SET last_seq = last_seq + 1 ... AND status = 'ACTIVE'`
  takes the seq, checks ACTIVE and locks the stream; under that lock it checks the fence
  (locking the lease row: no acquire can take the lease over before this commits) and
  looks for a resend, which rolls back, giving the seq back: seqs have no gaps.
- put_tags and save_header lock the stream row before reading what they decide on;
  acquire_lease locks the resource's lease_epochs row (an upsert) before counting.
- names: a partial unique index; versions: `UPDATE ... WHERE version = :expected`.
"""

from __future__ import annotations

import dataclasses
import secrets as random_secrets
from collections.abc import Callable, Iterable, Sequence
from functools import cache, cached_property
from typing import Any

import sqlalchemy as sa

from kvslite.server import metrics
from kvslite.server.store.fragment_queries import BY_CONTENT, FragmentQueries, fragment_of
from kvslite.server.store.group_commit import GroupCommit, Pending
from kvslite.server.store.metadata import (
    ACTIVE,
    DELETING,
    Fragment,
    Lease,
    LeaseLost,
    NameTaken,
    Stream,
    StreamNotActive,
    fragment_number,
)
from kvslite.server.store.schema import (
    INT,
    fragments,
    headers,
    lease_epochs,
    leases,
    media_storage,
    secrets,
    streams,
)
from kvslite.server.store.schema import tags as tag_table
from kvslite.server.store.sql_channels import SqlChannels
from kvslite.server.store.sql_iam import SqlIam

s, h, le = streams.c, headers.c, leases.c
_STREAM_COLUMNS = (s.name, s.arn, s.version, s.creation_time, s.data_retention_hours,
                   s.kms_key_id, s.status, s.device_name, s.media_type)


# Built once (see database.py): the statements of every add_fragment, and get_stream's.
_STREAM_BY_ARN = sa.select(*_STREAM_COLUMNS).where(s.arn == sa.bindparam("arn"))
_STREAM_BY_NAME = sa.select(*_STREAM_COLUMNS).where(s.name == sa.bindparam("name"),
                                                    s.status != DELETING)
# takes the next seq, checks ACTIVE and locks the stream's row, in one statement
_TAKE_SEQ = (sa.update(streams).where(s.arn == sa.bindparam("stream"), s.status == ACTIVE)
             .values(last_seq=s.last_seq + 1).returning(s.last_seq))
_CONTENT = ("arn", "producer_ms", "digest")  # the unique index fragments_by_content
# gives back the seq just taken, the stream's row still locked (a refusal or a resend)
_GIVE_SEQ_BACK = (sa.update(streams).where(s.arn == sa.bindparam("stream"))
                  .values(last_seq=s.last_seq - 1))
# (parameters named unlike columns: an UPDATE's SET reserves the columns' names)
_LEASE = sa.and_(le.resource == sa.bindparam("lease_resource"),
                 le.holder == sa.bindparam("lease_holder"), le.epoch == sa.bindparam("lease_epoch"))


@cache
def _insert_unless_stored(insert: Callable[..., Any]) -> sa.Executable:
    """Insert a fragment, or nothing where its content is stored already (a resend): the
    dedupe folded into the insert, no round trip of its own."""
    return (insert(fragments).on_conflict_do_nothing(index_elements=_CONTENT)
            .returning(fragments.c.seq))


def _columns(fragment: Fragment) -> dict[str, Any]:
    return {column.name: getattr(fragment, column.name) for column in fragments.columns}


@dataclasses.dataclass(frozen=True)
class _NewFragment:
    """An add_fragment request: the row (seq and number still to come) and its checks."""
    fragment: Fragment
    fence: Lease | None
    renew_fence_ms: int | None
    deliveries: tuple[tuple[str, str], ...]


@cache
def _holds_query(now: sa.ColumnElement[int]) -> sa.Select:
    """The live lease, locked against its removal until the transaction ends."""
    return (sa.select(le.epoch).where(_LEASE, le.expires_ms > now)
            .with_for_update(read=True, key_share=True))


@cache
def _renew_query(now: sa.ColumnElement[int]) -> sa.Update:
    """_holds_query's lease, renewed for "ttl_ms" more; no row if it is no longer held."""
    return (sa.update(leases).where(_LEASE, le.expires_ms > now)
            .values(expires_ms=now + sa.bindparam("ttl_ms", type_=INT)).returning(le.epoch))


def _stream_of(row: sa.Row) -> Stream:
    return Stream(name=row.name, arn=row.arn, version=row.version,
                  creation_time=row.creation_time,
                  data_retention_hours=row.data_retention_hours, kms_key_id=row.kms_key_id,
                  status=row.status, device_name=row.device_name, media_type=row.media_type)


class SqlMetadataStore(FragmentQueries, SqlChannels, SqlIam):
    """A MetadataStore on a SQL database; sqlite.py and postgres.py say which."""

    # -- streams ---------------------------------------------------------------------

    def create_stream(self, stream: Stream, tags: dict[str, str]) -> None:
        try:
            with self._write() as conn:
                conn.execute(sa.insert(streams).values(
                    arn=stream.arn, name=stream.name, version=stream.version,
                    creation_time=stream.creation_time,
                    data_retention_hours=stream.data_retention_hours,
                    kms_key_id=stream.kms_key_id, status=stream.status,
                    device_name=stream.device_name, media_type=stream.media_type))
                self._insert_tags(conn, stream.arn, tags)
        except sa.exc.IntegrityError as e:
            raise NameTaken(stream.name) from e

    def _streams(self, *where: sa.ColumnElement[bool], order_by=s.name,
                 limit: int | None = None) -> list[Stream]:
        query = sa.select(*_STREAM_COLUMNS).where(*where).order_by(order_by).limit(limit)
        with self._read() as conn:
            return [_stream_of(row) for row in conn.execute(query)]

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream | None:
        with self._read() as conn:
            if arn is not None:
                row = conn.execute(_STREAM_BY_ARN, {"arn": arn}).first()
            else:
                row = conn.execute(_STREAM_BY_NAME, {"name": name}).first()
        return None if row is None else _stream_of(row)

    def list_streams(self, *, prefix: str, after: str, limit: int) -> list[Stream]:
        # substr() compares the prefix exactly; LIKE would treat _ and % as wildcards
        return self._streams(sa.func.substr(s.name, 1, len(prefix)) == prefix,
                             s.name > after, s.status != DELETING, limit=limit)

    def update_stream(self, arn: str, expected_version: str, *, version: str,
                      device_name: str | None = None, media_type: str | None = None,
                      data_retention_hours: int | None = None) -> bool:
        changes = {"version": version, "device_name": device_name, "media_type": media_type,
                   "data_retention_hours": data_retention_hours}
        with self._write() as conn:
            return conn.execute(
                sa.update(streams)
                .where(s.arn == arn, s.version == expected_version, s.status == ACTIVE)
                .values({column: value for column, value in changes.items()
                         if value is not None})).rowcount == 1

    def mark_deleting(self, arn: str, expected_version: str | None) -> bool:
        query = sa.update(streams).where(s.arn == arn, s.status == ACTIVE)
        if expected_version is not None:
            query = query.where(s.version == expected_version)
        with self._write() as conn:
            if conn.execute(query.values(status=DELETING)).rowcount != 1:
                return False
            # a deleted stream stores no channel's media
            conn.execute(sa.delete(media_storage).where(media_storage.c.stream_arn == arn))
            return True

    def deleting_streams(self) -> list[Stream]:
        return self._streams(s.status == DELETING, order_by=s.arn)

    def purge_stream(self, arn: str, lease_resources: Iterable[str] = ()) -> None:
        resources = list(lease_resources)
        with self._write() as conn:  # tags, headers and fragments go by ON DELETE CASCADE
            conn.execute(sa.delete(streams).where(s.arn == arn))
            for table in (leases, lease_epochs):
                conn.execute(sa.delete(table).where(table.c.resource.in_(resources)))

    # -- tags ------------------------------------------------------------------------

    def get_tags(self, arn: str) -> dict[str, str]:
        with self._read() as conn:
            rows = conn.execute(sa.select(tag_table.c.key, tag_table.c.value)
                                .where(tag_table.c.arn == arn).order_by(tag_table.c.key))
            return {row.key: row.value for row in rows}

    def _lock_stream(self, conn: sa.Connection, arn: str) -> None:
        """Lock the stream's row until the transaction ends (none for an unknown ARN:
        writes for it then fail on the foreign key)."""
        conn.execute(sa.select(s.arn).where(s.arn == arn).with_for_update(key_share=True))

    def put_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        with self._write() as conn:
            self._lock_stream(conn, arn)  # concurrent put_tags count one after another
            existing = set(conn.execute(sa.select(tag_table.c.key).where(tag_table.c.arn == arn))
                           .scalars())
            if len(existing | set(tags)) > max_tags:
                return False
            upsert = self.insert(tag_table)
            conn.execute(upsert.on_conflict_do_update(
                index_elements=("arn", "key"), set_={"value": upsert.excluded.value}),
                [{"arn": arn, "key": k, "value": v} for k, v in tags.items()])
        return True

    @staticmethod
    def _insert_tags(conn: sa.Connection, arn: str, tags: dict[str, str]) -> None:
        if tags:
            conn.execute(sa.insert(tag_table),
                         [{"arn": arn, "key": k, "value": v} for k, v in tags.items()])

    def delete_tags(self, arn: str, keys: list[str]) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(tag_table).where(tag_table.c.arn == arn,
                                                    tag_table.c.key.in_(keys)))

    # -- headers and new fragments -----------------------------------------------------

    def save_header(self, arn: str, data: bytes) -> int:
        with self._write() as conn:
            self._lock_stream(conn, arn)  # two identical saves at once make one row
            latest = conn.execute(sa.select(h.id, h.data).where(h.arn == arn)
                                  .order_by(h.id.desc()).limit(1)).first()
            if latest is not None and latest.data == data:
                return latest.id
            return conn.execute(sa.insert(headers).values(arn=arn, data=data)
                                .returning(h.id)).scalar_one()

    def get_header(self, header_id: int) -> bytes:
        with self._read() as conn:
            data = conn.execute(sa.select(h.data).where(h.id == header_id)).scalar()
        if data is None:
            raise KeyError(header_id)
        return data

    def add_fragment(self, *, arn: str, producer_ms: int, server_ms: int, duration_ms: int,
                     size: int, header_id: int, blob_key: str, frames: bytes, digest: bytes,
                     fence: Lease | None = None, renew_fence_ms: int | None = None,
                     deliveries: Sequence[tuple[str, str]] = ()) -> tuple[Fragment, bool]:
        """Committed with the fragments other threads add at the same time (group_commit):
        one transaction, one commit, each caller told its own outcome."""
        fragment = Fragment(arn=arn, seq=0, number="", producer_ms=producer_ms,
                            server_ms=server_ms, duration_ms=duration_ms, size=size,
                            header_id=header_id, blob_key=blob_key, frames=frames,
                            digest=digest)
        return self._fragment_commits.submit(
            _NewFragment(fragment, fence, renew_fence_ms, tuple(deliveries)))

    @cached_property
    def _fragment_commits(self) -> GroupCommit[_NewFragment]:
        return GroupCommit(self._commit_fragments)

    def _commit_fragments(self, batch: list[Pending[_NewFragment]]) -> None:
        """Add the batch's fragments in one transaction. Refusals (stream not active, lease
        lost) and resends change nothing, so they settle their own item alone; any other
        error (a broken row) spoils the transaction: then each item runs on its own."""
        # streams locked in one order: batches on two nodes cannot deadlock on them
        ordered = sorted(batch, key=lambda pending: pending.request.fragment.arn)
        try:
            with self._write() as conn:
                outcomes = [self._add_in(conn, pending.request) for pending in ordered]
                added = {o[0].arn for o in outcomes if isinstance(o, tuple) and o[1]}
                self._fragments_added(conn, sorted(added))
        except Exception:
            if len(batch) == 1:
                raise
            for pending in batch:
                try:
                    self._commit_fragments([pending])
                except Exception as e:  # noqa: BLE001 - its own item's outcome
                    pending.fail(e)
            return
        metrics.FRAGMENT_COMMITS.inc()
        for pending, outcome in zip(ordered, outcomes):
            if isinstance(outcome, Exception):
                pending.fail(outcome)
            else:
                pending.succeed(outcome)
        for arn in sorted(added):
            self._fragment_committed(arn)

    def _add_in(self, conn: sa.Connection, new: _NewFragment
                ) -> tuple[Fragment, bool] | StreamNotActive | LeaseLost:
        """One fragment, in the batch's transaction: added (True), the stored original of a
        resend (False), or the refusal, having changed nothing."""
        arn = new.fragment.arn
        taken = self._run_compiled(conn, _TAKE_SEQ, stream=arn)
        if not taken:
            return StreamNotActive(arn)
        if new.fence is not None and not self._holds(conn, new.fence, new.renew_fence_ms):
            self._run_compiled(conn, _GIVE_SEQ_BACK, stream=arn)
            return LeaseLost(new.fence.resource)
        seq = taken[0][0]
        fragment = dataclasses.replace(new.fragment, seq=seq, number=fragment_number(seq))
        insert = _insert_unless_stored(self.insert)
        if not self._run_compiled(conn, insert, **_columns(fragment)):
            self._run_compiled(conn, _GIVE_SEQ_BACK, stream=arn)  # a resend: stored already
            resent = self._run_compiled(conn, BY_CONTENT, arn=arn, digest=fragment.digest,
                                        producer_ms=fragment.producer_ms)
            return fragment_of(resent[0]), False
        self._record_deliveries(conn, arn, fragment.number, new.deliveries)
        return fragment, True

    def _fragments_added(self, conn: sa.Connection, arns: list[str]) -> None:
        """Hook, in the fragments' transaction (PostgreSQL: NOTIFY every node)."""

    def _fragment_committed(self, arn: str) -> None:
        """Hook, once the fragment is committed (SQLite: wake this process's readers)."""

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, resource: str, holder: str, *, limit: int, ttl_ms: int
                      ) -> Lease | None:
        now = self.NOW
        with self._write() as conn:
            # lock the resource: acquires on it run one after another from here
            lock = self.insert(lease_epochs).values(resource=resource, epoch=0)
            conn.execute(lock.on_conflict_do_update(
                index_elements=("resource",), set_={"epoch": lease_epochs.c.epoch}))
            conn.execute(sa.delete(leases).where(le.resource == resource,
                                                 le.expires_ms <= now),
                         {"now": self._now_ms()})
            held = conn.execute(sa.select(sa.func.count()).select_from(leases)
                                .where(le.resource == resource)).scalar_one()
            if held >= limit:
                return None
            epoch = conn.execute(
                sa.update(lease_epochs).where(lease_epochs.c.resource == resource)
                .values(epoch=lease_epochs.c.epoch + 1)
                .returning(lease_epochs.c.epoch)).scalar_one()
            conn.execute(sa.insert(leases).values(resource=resource, holder=holder,
                                                  epoch=epoch, expires_ms=now + ttl_ms),
                         {"now": self._now_ms()})
        return Lease(resource, holder, epoch)

    @staticmethod
    def _lease(lease: Lease) -> dict:
        return {"lease_resource": lease.resource, "lease_holder": lease.holder,
                "lease_epoch": lease.epoch}

    def _holds(self, conn: sa.Connection, lease: Lease, renew_ms: int | None = None) -> bool:
        """Whether `lease` is live (and then renewed for `renew_ms`, if given); its row stays
        locked until the transaction ends, so no acquire can drop it (and take the slot
        over) before this commits."""
        query = _holds_query(self.NOW) if renew_ms is None else _renew_query(self.NOW)
        return bool(self._run_compiled(conn, query, **self._lease(lease), now=self._now_ms(),
                                       ttl_ms=renew_ms))  # (the first query has no ttl_ms)

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        with self._write() as conn:
            return conn.execute(
                sa.update(leases).where(_LEASE, le.expires_ms > self.NOW)
                .values(expires_ms=self.NOW + ttl_ms),
                {**self._lease(lease), "now": self._now_ms()}).rowcount == 1

    def release_lease(self, lease: Lease) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(leases).where(_LEASE), self._lease(lease))

    def count_leases(self, resource: str) -> int:
        with self._read() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(leases)
                .where(le.resource == resource, le.expires_ms > self.NOW),
                {"now": self._now_ms()}).scalar_one()

    # -- secrets ---------------------------------------------------------------------

    def find_secret(self, name: str) -> bytes | None:
        with self._read() as conn:
            return conn.execute(sa.select(secrets.c.value)
                                .where(secrets.c.name == name)).scalar_one_or_none()

    def delete_secret(self, name: str) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(secrets).where(secrets.c.name == name))

    def secret(self, name: str, create: Callable[[], bytes] | None = None) -> bytes:
        with self._read() as conn:
            value = conn.execute(sa.select(secrets.c.value)
                                 .where(secrets.c.name == name)).scalar_one_or_none()
        if value is not None:
            return value
        made = create() if create else random_secrets.token_bytes(32)  # outside a transaction
        with self._write() as conn:
            # a concurrent first insert of the name waits for the other, then does nothing
            conn.execute(self.insert(secrets).values(name=name, value=made)
                         .on_conflict_do_nothing(index_elements=("name",)))
            return conn.execute(sa.select(secrets.c.value)
                                .where(secrets.c.name == name)).scalar_one()

