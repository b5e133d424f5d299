"""The metadata schema, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

Every query in `sql_store` is written against these tables. A new database is created
from them; an older one is brought up to them by `migrations`. Column names are written
here, never derived from the record classes in `metadata`.

Where the two engines differ, the types say so: times are 64-bit integers (BIGINT on
PostgreSQL, INTEGER on SQLite, whose `INTEGER PRIMARY KEY` is the row id that numbers new
rows), blobs are BYTEA or BLOB, and text that is compared or sorted (names, ARNs, keys)
uses `COLLATE "C"` on PostgreSQL, byte order as SQLite compares text, whatever the
database's locale, so ListStreams pages the same on either store.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")  # compared, sorted
TEXT = sa.Text()
BLOB = sa.LargeBinary()
SECONDS: sa.types.TypeEngine[float] = sa.Double().with_variant(sqlite.REAL(), "sqlite")


def _stream_arn() -> sa.Column:
    return sa.Column("arn", KEY, sa.ForeignKey("streams.arn", ondelete="CASCADE"),
                     nullable=False)


metadata = sa.MetaData()

# A deleted stream stays, status DELETING, until its media is gone, while its name is free
# for a new stream. `last_seq` numbers fragments and never goes down, so a fragment number
# is never given twice, even after retention removed every fragment.
streams = sa.Table(
    "streams", metadata,
    sa.Column("arn", KEY, primary_key=True),
    sa.Column("name", KEY, nullable=False),
    sa.Column("version", TEXT, nullable=False),
    sa.Column("creation_time", SECONDS, nullable=False),
    sa.Column("data_retention_hours", INT, nullable=False),
    sa.Column("kms_key_id", TEXT, nullable=False),
    sa.Column("status", TEXT, nullable=False),
    sa.Column("device_name", TEXT),
    sa.Column("media_type", TEXT),
    sa.Column("last_seq", INT, nullable=False, server_default="0"),
)
_not_deleting = sa.text("status <> 'DELETING'")
sa.Index("streams_by_name", streams.c.name, unique=True,
         sqlite_where=_not_deleting, postgresql_where=_not_deleting)

tags = sa.Table(
    "tags", metadata,
    _stream_arn(),
    sa.Column("key", KEY, nullable=False),
    sa.Column("value", TEXT, nullable=False),
    sa.PrimaryKeyConstraint("arn", "key"),
)

# Stream headers (EBML + Info + Tracks), which fragments point at.
headers = sa.Table(
    "headers", metadata,
    sa.Column("id", INT, sa.Identity(), primary_key=True),
    _stream_arn(),
    sa.Column("data", BLOB, nullable=False),
)
sa.Index("headers_by_stream", headers.c.arn, headers.c.id)

# `seq` orders a stream's fragments; `frames` is the packed frame index (see
# kvslite.server.archive.fragments) so readers never rescan a stored cluster; `digest` tells a
# resend (same bytes) from a new fragment with the same producer timestamp.
fragments = sa.Table(
    "fragments", metadata,
    _stream_arn(),
    sa.Column("seq", INT, nullable=False),
    sa.Column("number", KEY, nullable=False),
    sa.Column("producer_ms", INT, nullable=False),
    sa.Column("server_ms", INT, nullable=False),
    sa.Column("duration_ms", INT, nullable=False),
    sa.Column("size", INT, nullable=False),
    sa.Column("header_id", INT, sa.ForeignKey("headers.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("blob_key", KEY, nullable=False),
    sa.Column("frames", BLOB, nullable=False),
    sa.Column("digest", BLOB),
    sa.PrimaryKeyConstraint("arn", "seq"),
)
# a fragment's number is its seq written as AWS writes numbers (metadata.fragment_number):
# found by (arn, seq), it needs no index of its own
sa.Index("fragments_by_server_time", fragments.c.arn, fragments.c.server_ms)
# (arn, producer_ms, digest) also finds a stream's fragments by producer time: no index of
# its own, which every fragment's commit would write as well
sa.Index("fragments_by_content", fragments.c.arn, fragments.c.producer_ms,
         fragments.c.digest, unique=True)
sa.Index("fragments_by_blob", fragments.c.blob_key)
sa.Index("fragments_by_header", fragments.c.header_id)

# Leases hold the per-stream connection limits across processes and nodes; a resource's
# epochs only ever grow, so a lost lease is fenced off.
leases = sa.Table(
    "leases", metadata,
    sa.Column("resource", KEY, nullable=False),
    sa.Column("holder", KEY, nullable=False),
    sa.Column("epoch", INT, nullable=False),
    sa.Column("expires_ms", INT, nullable=False),
    sa.PrimaryKeyConstraint("resource", "holder"),
)
lease_epochs = sa.Table(
    "lease_epochs", metadata,
    sa.Column("resource", KEY, primary_key=True),
    sa.Column("epoch", INT, nullable=False),
)

# Server-wide secrets (e.g. the key that signs GetImages NextTokens), shared by nodes.
secrets = sa.Table(
    "secrets", metadata,
    sa.Column("name", KEY, primary_key=True),
    sa.Column("value", BLOB, nullable=False),
)

# A stream's image-generation and notification configurations (the API's JSON).
stream_configs = sa.Table(
    "stream_configs", metadata,
    _stream_arn(),
    sa.Column("kind", KEY, nullable=False),
    sa.Column("config", TEXT, nullable=False),
    sa.PrimaryKeyConstraint("arn", "kind"),
)

# The outbox: work a fragment's event tags asked for, recorded in the fragment's commit and
# done after it; a claim (claimed_until_ms) keeps two workers off one row.
deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("id", INT, sa.Identity(), primary_key=True),
    _stream_arn(),
    sa.Column("fragment_number", KEY, nullable=False),
    sa.Column("kind", KEY, nullable=False),
    sa.Column("event", TEXT, nullable=False),
    sa.Column("attempts", INT, nullable=False, server_default="0"),
    sa.Column("due_ms", INT, nullable=False, server_default="0"),
    sa.Column("claimed_until_ms", INT, nullable=False, server_default="0"),
    sa.Column("last_error", TEXT),
)
sa.Index("deliveries_by_due", deliveries.c.due_ms)
sa.Index("deliveries_by_stream", deliveries.c.arn)

# WebRTC signaling channels. Like a stream, a deleted channel is DELETING (its name free)
# until its row goes; its tags go with it.
signaling_channels = sa.Table(
    "signaling_channels", metadata,
    sa.Column("arn", KEY, primary_key=True),
    sa.Column("name", KEY, nullable=False),
    sa.Column("channel_type", TEXT, nullable=False),
    sa.Column("status", TEXT, nullable=False),
    sa.Column("message_ttl_seconds", INT, nullable=False),
    sa.Column("version", TEXT, nullable=False),
    sa.Column("creation_time", SECONDS, nullable=False),
)
sa.Index("signaling_channels_by_name", signaling_channels.c.name, unique=True,
         sqlite_where=_not_deleting, postgresql_where=_not_deleting)

channel_tags = sa.Table(
    "channel_tags", metadata,
    sa.Column("arn", KEY, sa.ForeignKey("signaling_channels.arn", ondelete="CASCADE"),
              nullable=False),
    sa.Column("key", KEY, nullable=False),
    sa.Column("value", TEXT, nullable=False),
    sa.PrimaryKeyConstraint("arn", "key"),
)

# WebRTC ingestion: the stream a channel's media is stored in. One stream per channel
# (the key) and one channel per stream (a unique index); a row goes with its channel,
# and with its stream when that is marked deleting (sql_store.mark_deleting).
media_storage = sa.Table(
    "media_storage", metadata,
    sa.Column("channel_arn", KEY,
              sa.ForeignKey("signaling_channels.arn", ondelete="CASCADE"), primary_key=True),
    sa.Column("stream_arn", KEY, sa.ForeignKey("streams.arn", ondelete="CASCADE"),
              nullable=False),
    sa.Column("status", TEXT, nullable=False),  # ENABLED or DISABLED
)
sa.Index("media_storage_by_stream", media_storage.c.stream_arn, unique=True)

# IAM users, their access keys and inline policies (kvslite.server.iam). A key's secret is
# stored encrypted (`secret`, by iam/credentials.py), never in clear. Keys and policies
# name their user without cascading: a user who has either may not be deleted (AWS's
# DeleteConflict).
iam_users = sa.Table(
    "iam_users", metadata,
    sa.Column("name", KEY, primary_key=True),
    sa.Column("user_id", TEXT, nullable=False),
    sa.Column("path", TEXT, nullable=False),
    sa.Column("create_date", SECONDS, nullable=False),
)

iam_access_keys = sa.Table(
    "iam_access_keys", metadata,
    sa.Column("access_key_id", KEY, primary_key=True),
    sa.Column("user_name", KEY, sa.ForeignKey("iam_users.name", ondelete="RESTRICT"),
              nullable=False),  # DeleteUser refuses (DeleteConflict) before this would
    sa.Column("secret", BLOB, nullable=False),
    sa.Column("status", TEXT, nullable=False),  # Active or Inactive
    sa.Column("create_date", SECONDS, nullable=False),
)
sa.Index("iam_access_keys_by_user", iam_access_keys.c.user_name)

iam_user_policies = sa.Table(
    "iam_user_policies", metadata,
    sa.Column("user_name", KEY, sa.ForeignKey("iam_users.name", ondelete="RESTRICT"),
              nullable=False),  # DeleteUser refuses (DeleteConflict) before this would
    sa.Column("policy_name", KEY, nullable=False),
    sa.Column("document", TEXT, nullable=False),
    sa.PrimaryKeyConstraint("user_name", "policy_name"),
)
