"""Signaling messages between the nodes of a cluster, through PostgreSQL.

Each message for a connection on another node is a row of `kvslite_signaling_messages`
(channel ARN, recipient: NULL for the master or a viewer's ClientId, the frame, when it
expires), and the statement that inserts it also runs `pg_notify(CHANNEL, note)`, the note
being `{"id", "arn", "to"}`: small whatever the frame's size (NOTIFY payloads stop at
8,000 bytes; a frame may be 40 KB). The node holding the recipient claims the row with
DELETE ... RETURNING, so exactly one node delivers it; a row nobody claims waits for a
master that connects later (held messages, across nodes) until it expires. Joins are
notes too (`{"join", "arn", "to"}`): PostgreSQL hands every listener the notifications
in commit order, which decides which of two masters connecting at once is the newer.
A deleted channel is a note too (`{"deleted", "arn", "to"}`), sent by the statement that
deletes the messages waiting for it.

The table is UNLOGGED (a message lives seconds; a database crash may drop it, as a node
crash would) and made when a node first uses the database, outside the metadata schema: only
PostgreSQL has it, and nothing else reads it. Everything runs on the event loop
(psycopg's asyncio connections): one connection listening, one for the statements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg

log = logging.getLogger("kvslite.signaling")

CHANNEL = "kvslite_signaling"
TABLE = "kvslite_signaling_messages"
CREATE_LOCK = 0x6B76_736C_6974_6502  # an advisory lock: nodes starting together create once
SWEEP_EVERY_S = 10.0  # how often a node deletes expired rows
MAX_BACKOFF_S = 10.0

CREATE = f"""
    CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} (
        id BIGSERIAL PRIMARY KEY,
        channel_arn TEXT NOT NULL,
        recipient TEXT,
        frame TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX IF NOT EXISTS {TABLE}_by_recipient ON {TABLE} (channel_arn, recipient);
"""

OnNote = Callable[[dict], Awaitable[None]]


class BusDown(Exception):
    """The database did not take or give a message (the caller falls back or drops it)."""


class SignalingBus:
    """Publish and claim signaling messages and joins; `listen` feeds every note to a
    callback, and calls `on_listening` each time LISTEN takes effect (again: notes sent
    while it was down are lost, but their rows are not)."""

    def __init__(self, url: str):
        self.url = url
        self._conn: psycopg.AsyncConnection | None = None
        self._swept = 0.0
        self.listening = asyncio.Event()

    async def publish(self, channel_arn: str, recipient: str | None, frame: str,
                      ttl_s: float) -> None:
        """Store the frame for `recipient` and tell every node (one statement: atomic)."""
        await self._execute(f"""
            WITH m AS (INSERT INTO {TABLE} (channel_arn, recipient, frame, expires_at)
                       VALUES (%(arn)s, %(to)s, %(frame)s,
                               now() + make_interval(secs => %(ttl)s))
                       RETURNING id)
            SELECT pg_notify(%(channel)s, json_build_object(
                'id', m.id, 'arn', %(arn)s::text, 'to', %(to)s::text)::text) FROM m""",
            {"arn": channel_arn, "to": recipient, "frame": frame, "ttl": float(ttl_s),
             "channel": CHANNEL})
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._swept = time.monotonic()
            await self._execute(f"DELETE FROM {TABLE} WHERE expires_at < now()")

    async def publish_join(self, channel_arn: str, recipient: str | None,
                           token: str) -> None:
        note = json.dumps({"join": token, "arn": channel_arn, "to": recipient})
        await self._execute("SELECT pg_notify(%s, %s)", (CHANNEL, note))

    async def publish_deleted(self, channel_arn: str) -> None:
        """Drop the messages waiting for the channel's connections and tell every node."""
        note = json.dumps({"deleted": True, "arn": channel_arn, "to": None})
        await self._execute(f"""
            WITH gone AS (DELETE FROM {TABLE} WHERE channel_arn = %s)
            SELECT pg_notify(%s, %s)""", (channel_arn, CHANNEL, note))

    async def claim(self, message_ids: list[int]) -> list[tuple[str, str | None, str]]:
        """(channel ARN, recipient, frame) of each of these messages, oldest first, which no
        other node will get; none for those another node claimed or that expired."""
        return await self._execute(f"""
            WITH m AS (DELETE FROM {TABLE} WHERE id = ANY(%s) AND expires_at > now()
                       RETURNING id, channel_arn, recipient, frame)
            SELECT channel_arn, recipient, frame FROM m ORDER BY id""", (message_ids,))

    async def claim_waiting(self, channel_arn: str, recipient: str | None) -> list[str]:
        """Every unexpired frame waiting for `recipient`, oldest first."""
        rows = await self._execute(f"""
            WITH m AS (DELETE FROM {TABLE} WHERE channel_arn = %(arn)s
                       AND recipient IS NOT DISTINCT FROM %(to)s AND expires_at > now()
                       RETURNING id, frame)
            SELECT frame FROM m ORDER BY id""", {"arn": channel_arn, "to": recipient})
        return [row[0] for row in rows]

    async def listen(self, on_note: OnNote, on_listening: Callable[[], Awaitable[None]]
                     ) -> None:
        """Run until cancelled, reconnecting with backoff when the database goes away."""
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True) as conn:
                    await self._create_table(conn)
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    backoff = 0.5
                    await on_listening()
                    async for note in conn.notifies():
                        await on_note(json.loads(note.payload))
            except psycopg.Error as e:
                log.warning("signaling between nodes interrupted (%s); retrying", e)
            self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _create_table(self, conn: psycopg.AsyncConnection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
            await conn.execute(CREATE)

    async def _execute(self, sql: str, params=None) -> list[tuple]:
        """Run one statement on this node's connection, reconnecting once if it broke."""
        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self.url,
                                                                       autocommit=True)
                    # a node may delete a channel before any node has listened
                    await self._create_table(self._conn)
                cursor = await self._conn.execute(sql, params)
                return await cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError as e:
                if self._conn is not None:
                    await self._conn.close()
                if attempt == 2:
                    raise BusDown(str(e)) from e
            except psycopg.Error as e:
                raise BusDown(str(e)) from e
        return []
