"""The SQLite store's migrations: version N brings the schema from N-1 to N.

The version is `PRAGMA user_version`. HISTORY is the SQL SQLite's schema was kept in
before `schema` defined it once for both engines: frozen, so that databases made then
upgrade. A migration that rebuilds a table says so with `REBUILD` in its first line: the
store runs migrations with foreign keys off, as SQLite requires for a rebuild. A new
database is created from `schema` directly.
"""

from __future__ import annotations

from kvslite.server.store.migrations import STEPS, Migration

HISTORY = [
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
    # (see kvslite.server.archive.fragments) so readers never rescan a stored cluster.
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
    # 4 (REBUILD): the durable archive. A deleted stream stays, status DELETING, until its
    # media is gone, while its name is free for a new stream: names are unique among the
    # streams not being deleted. `last_seq` numbers fragments: it never goes down, so a
    # fragment number is never given twice, even after retention removed every fragment.
    # A fragment's digest tells a resend (same bytes) from a new fragment with the same
    # producer timestamp. Leases hold the per-stream connection
    # limits across processes; their epochs only ever grow, so a lost lease is fenced off.
    """
    REBUILD;
    CREATE TABLE streams_rebuilt (
        arn TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        creation_time REAL NOT NULL,
        data_retention_hours INTEGER NOT NULL,
        kms_key_id TEXT NOT NULL,
        status TEXT NOT NULL,
        device_name TEXT,
        media_type TEXT,
        last_seq INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO streams_rebuilt SELECT arn, name, version, creation_time,
        data_retention_hours, kms_key_id, status, device_name, media_type,
        (SELECT coalesce(max(seq), 0) FROM fragments WHERE fragments.arn = streams.arn)
        FROM streams;
    DROP TABLE streams;
    ALTER TABLE streams_rebuilt RENAME TO streams;
    CREATE UNIQUE INDEX streams_by_name ON streams (name) WHERE status <> 'DELETING';
    ALTER TABLE fragments ADD COLUMN digest BLOB;
    CREATE UNIQUE INDEX fragments_by_content ON fragments (arn, producer_ms, digest);
    CREATE INDEX fragments_by_blob ON fragments (blob_key);
    CREATE TABLE leases (
        resource TEXT NOT NULL,
        holder TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (resource, holder)
    );
    CREATE TABLE lease_epochs (resource TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
    """,
    # 5: a stream's image-generation and notification configurations (the API's JSON), and
    # the outbox: work a fragment's event tags asked for, recorded in the fragment's commit
    # and done after it; a claim (claimed_until_ms) keeps two workers off one row.
    """
    CREATE TABLE stream_configs (
        arn TEXT NOT NULL REFERENCES streams(arn) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        config TEXT NOT NULL,
        PRIMARY KEY (arn, kind)
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        arn TEXT NOT NULL REFERENCES streams(arn) ON DELETE CASCADE,
        fragment_number TEXT NOT NULL,
        kind TEXT NOT NULL,
        event TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due_ms INTEGER NOT NULL DEFAULT 0,
        claimed_until_ms INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX deliveries_by_due ON deliveries (due_ms);
    """,
]

MIGRATIONS: list[Migration] = [*HISTORY, *STEPS]
