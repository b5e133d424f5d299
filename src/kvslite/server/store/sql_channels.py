"""WebRTC signaling channels, their tags and their media storage (the stream a channel's
media is stored in), for both SQL stores (see MetadataStore).

The same guarantees as for streams: names unique among channels not being deleted (a
partial unique index), updates and deletion compare-and-set on the version, the tag
limit checked and applied in one transaction that first locks the channel's row. A media
storage mapping is set in one transaction that locks the channel's and the stream's rows
(so neither is marked deleting meanwhile); the unique index on the stream lets only one
of two channels racing for a stream have it.
"""

from __future__ import annotations

import sqlalchemy as sa

from kvslite.server.store.database import SqlDatabase
from kvslite.server.store.metadata import (
    ACTIVE,
    DELETING,
    MappedElsewhere,
    NameTaken,
    SignalingChannel,
)
from kvslite.server.store.schema import channel_tags, media_storage, signaling_channels, streams

c, t, m = signaling_channels.c, channel_tags.c, media_storage.c
_COLUMNS = (c.name, c.arn, c.channel_type, c.status, c.message_ttl_seconds, c.version,
            c.creation_time)


def _channel_of(row: sa.Row) -> SignalingChannel:
    return SignalingChannel(name=row.name, arn=row.arn, channel_type=row.channel_type,
                            status=row.status, message_ttl_seconds=row.message_ttl_seconds,
                            version=row.version, creation_time=row.creation_time)


class SqlChannels(SqlDatabase):
    def create_channel(self, channel: SignalingChannel, tags: dict[str, str]) -> None:
        try:
            with self._write() as conn:
                conn.execute(sa.insert(signaling_channels).values(
                    name=channel.name, arn=channel.arn, channel_type=channel.channel_type,
                    status=channel.status, message_ttl_seconds=channel.message_ttl_seconds,
                    version=channel.version, creation_time=channel.creation_time))
                if tags:
                    conn.execute(sa.insert(channel_tags), [
                        {"arn": channel.arn, "key": k, "value": v} for k, v in tags.items()])
        except sa.exc.IntegrityError as e:
            raise NameTaken(channel.name) from e

    def get_channel(self, *, name: str | None = None, arn: str | None = None
                    ) -> SignalingChannel | None:
        where = c.arn == arn if arn is not None else sa.and_(c.name == name,
                                                              c.status != DELETING)
        with self._read() as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(where)).first()
        return None if row is None else _channel_of(row)

    def list_channels(self, *, prefix: str, after: str, limit: int) -> list[SignalingChannel]:
        # substr() compares the prefix exactly; LIKE would treat _ and % as wildcards
        query = (sa.select(*_COLUMNS)
                 .where(sa.func.substr(c.name, 1, len(prefix)) == prefix, c.name > after,
                        c.status != DELETING)
                 .order_by(c.name).limit(limit))
        with self._read() as conn:
            return [_channel_of(row) for row in conn.execute(query)]

    def update_channel(self, arn: str, expected_version: str, *, version: str,
                       message_ttl_seconds: int | None = None) -> bool:
        changes: dict[str, str | int] = {"version": version}
        if message_ttl_seconds is not None:
            changes["message_ttl_seconds"] = message_ttl_seconds
        with self._write() as conn:
            return conn.execute(
                sa.update(signaling_channels)
                .where(c.arn == arn, c.version == expected_version, c.status == ACTIVE)
                .values(changes)).rowcount == 1

    def mark_channel_deleting(self, arn: str, expected_version: str | None) -> bool:
        query = sa.update(signaling_channels).where(c.arn == arn, c.status == ACTIVE)
        if expected_version is not None:
            query = query.where(c.version == expected_version)
        with self._write() as conn:
            return conn.execute(query.values(status=DELETING)).rowcount == 1

    def purge_channel(self, arn: str) -> None:
        with self._write() as conn:  # its tags go by ON DELETE CASCADE
            conn.execute(sa.delete(signaling_channels).where(c.arn == arn))

    # -- tags ------------------------------------------------------------------------

    def get_channel_tags(self, arn: str) -> dict[str, str]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.key, t.value).where(t.arn == arn).order_by(t.key))
            return {row.key: row.value for row in rows}

    def put_channel_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        with self._write() as conn:
            # lock the channel: concurrent put_channel_tags count one after another
            conn.execute(sa.select(c.arn).where(c.arn == arn).with_for_update(key_share=True))
            existing = set(conn.execute(sa.select(t.key).where(t.arn == arn)).scalars())
            if len(existing | set(tags)) > max_tags:
                return False
            upsert = self.insert(channel_tags)
            conn.execute(upsert.on_conflict_do_update(
                index_elements=("arn", "key"), set_={"value": upsert.excluded.value}),
                [{"arn": arn, "key": k, "value": v} for k, v in tags.items()])
        return True

    def delete_channel_tags(self, arn: str, keys: list[str]) -> None:
        with self._write() as conn:
            conn.execute(sa.delete(channel_tags).where(t.arn == arn, t.key.in_(keys)))

    # -- media storage ---------------------------------------------------------------

    def set_media_storage(self, channel_arn: str, status: str, stream_arn: str | None
                          ) -> None:
        try:
            with self._write() as conn:
                # exclusively: two updates of one channel run one after the other
                _lock_active(conn, signaling_channels, channel_arn, exclusive=True)
                if stream_arn is None:
                    conn.execute(sa.delete(media_storage).where(m.channel_arn == channel_arn))
                    return
                current = conn.execute(sa.select(m.stream_arn)
                                       .where(m.channel_arn == channel_arn)).scalar()
                if current not in (None, stream_arn):
                    raise MappedElsewhere(f"{channel_arn} is mapped to {current}")
                _lock_active(conn, streams, stream_arn, exclusive=False)
                upsert = self.insert(media_storage).values(
                    channel_arn=channel_arn, stream_arn=stream_arn, status=status)
                conn.execute(upsert.on_conflict_do_update(
                    index_elements=("channel_arn",), set_={"status": status}))
        except sa.exc.IntegrityError as e:  # the stream's unique index: another channel's
            raise MappedElsewhere(f"{stream_arn} is mapped to another channel") from e

    def get_media_storage(self, channel_arn: str) -> tuple[str, str] | None:
        with self._read() as conn:
            row = conn.execute(sa.select(m.status, m.stream_arn)
                               .where(m.channel_arn == channel_arn)).first()
        return None if row is None else (row.status, row.stream_arn)

    def channel_for_stream(self, stream_arn: str) -> str | None:
        with self._read() as conn:
            return conn.execute(sa.select(m.channel_arn)
                                .where(m.stream_arn == stream_arn)).scalar()


def _lock_active(conn: sa.Connection, table: sa.Table, arn: str, *, exclusive: bool) -> None:
    """Lock an ACTIVE row of `table` until the transaction ends, so it is not marked
    deleting meanwhile (FOR NO KEY UPDATE where `exclusive`, else FOR SHARE);
    MappedElsewhere if there is none."""
    query = sa.select(table.c.arn).where(table.c.arn == arn, table.c.status == ACTIVE)
    query = (query.with_for_update(key_share=True) if exclusive
             else query.with_for_update(read=True))
    if conn.execute(query).first() is None:
        raise MappedElsewhere(f"{arn} is not ACTIVE")
