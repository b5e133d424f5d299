"""The hub's relay for a cluster: nodes sharing PostgreSQL deliver to each other.

A message whose recipient is connected here goes straight to it. Otherwise it goes to
the database (store/postgres_signaling.py): every node listens, and the node holding the
recipient claims it; if none does, it waits there, so a master connecting later on any
node gets what viewers sent while no master was connected (until MessageTtlSeconds).
Broadcast rather than a table of who is connected where: nothing goes stale when a node
dies, and the row that carries the message is also what holds it.

Newest connection wins across nodes: each join is announced, and PostgreSQL hands every
node the announcements in one order (commit order). A node whose connection was announced
before a join for the same master (or ClientId) elsewhere ends it with GO_AWAY.

A deleted channel is announced the same way: every node ends its connections to it with
GO_AWAY, and the messages waiting for it in the database go with the announcement.

What the database does not take falls back to this node alone: a viewer's message is held
here, a master's is refused with the usual STATUS_RESPONSE.

A channel's storage session (WebRTC ingestion) may run on another node than its master's
WebSocket: messages for it go to the recipient `STORAGE` (no ClientId can be that), and the
node that `storage.hosts` the channel's session claims them (server/ingestion/hosting.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

from kvslite.server.signaling.hub import Connection, Hub
from kvslite.server.store.postgres_signaling import BusDown, SignalingBus

log = logging.getLogger("kvslite.signaling")

VIEWER_MESSAGE_TTL_S = 5.0  # a master's message for a viewer connected nowhere: dropped
DEFAULT_TTL_S = 60.0  # AWS's default MessageTtlSeconds
LISTEN_WAIT_S = 5.0  # how long a first connection waits for this node to listen

STORAGE = "#storage"  # the recipient of a channel's storage session ('#': in no ClientId)

Key = tuple[str, "str | None"]  # channel ARN, and None (the master) or a viewer's ClientId


class StorageHost(Protocol):
    """This node's storage sessions, as the relay sees them."""

    def hosts(self, channel_arn: str) -> bool: ...

    async def receive_relayed(self, channel_arn: str, text: str) -> None: ...


@dataclass(eq=False)
class Joined:
    conn: Connection
    token: str  # names this join in the announcements
    seen: bool = False  # our own announcement came back: any later one is newer


class ClusterRelay:
    def __init__(self, hub: Hub, bus: SignalingBus):
        self.hub, self.bus = hub, bus
        self.node = uuid.uuid4().hex[:12]
        self.count = itertools.count(1)
        self.joins: dict[Key, Joined] = {}
        self.listener: asyncio.Task | None = None
        self.to_claim: list[int] = []  # messages for connections here, not yet claimed
        self.claimer: asyncio.Task | None = None
        self.storage: StorageHost | None = None  # set by the storage sessions (ingestion)

    async def deliver(self, channel_arn: str, client_id: str | None, text: str) -> bool:
        if await self.hub.deliver_here(channel_arn, client_id, text):
            return True
        await self._listening()
        ttl_s = self._message_ttl(channel_arn) if client_id is None else VIEWER_MESSAGE_TTL_S
        try:
            await self.bus.publish(channel_arn, client_id, text, ttl_s)
        except BusDown as e:
            log.warning("cannot relay a signaling message through the database: %s", e)
            return False
        return True

    async def joined(self, conn: Connection) -> None:
        """Announce the connection (older ones elsewhere end); a master claims what waits."""
        await self._listening()
        key = (conn.channel_arn, conn.client_id)
        self.joins = {k: j for k, j in self.joins.items() if not j.conn.ended}
        joined = self.joins[key] = Joined(conn, f"{self.node}-{next(self.count)}")
        try:
            await self.bus.publish_join(conn.channel_arn, conn.client_id, joined.token)
            if conn.client_id is None:
                await self._claim_waiting(key)
        except BusDown as e:
            log.warning("cannot announce a signaling connection to the other nodes: %s", e)

    async def channel_deleted(self, channel_arn: str) -> None:
        try:
            await self.bus.publish_deleted(channel_arn)
        except BusDown as e:
            log.warning("cannot announce a deleted signaling channel to the other nodes: "
                        "%s", e)

    async def _listening(self) -> None:
        """Listen from the first connection on (a node without any has nothing to do)."""
        if self.listener is None:
            self.listener = asyncio.create_task(self.bus.listen(self._on_note,
                                                                self._on_listening))
        if not self.bus.listening.is_set():
            try:
                await asyncio.wait_for(self.bus.listening.wait(), LISTEN_WAIT_S)
            except TimeoutError:  # go on: the listener keeps retrying, and on reconnecting
                log.warning("not yet listening for other nodes' signaling messages after "
                            "%s s; this node's connections get them once it is", LISTEN_WAIT_S)

    async def _on_note(self, note: dict) -> None:
        key: Key = (note["arn"], note["to"])
        if "deleted" in note:
            await self.hub.end_channel(note["arn"])
        elif "join" in note:
            await self._on_join(key, note["join"])
        elif self._here(key):  # claimed in batches: one statement for all that came meanwhile
            self.to_claim.append(note["id"])
            if self.claimer is None or self.claimer.done():
                self.claimer = asyncio.create_task(self._claim())

    async def _claim(self) -> None:
        while self.to_claim:
            ids, self.to_claim = self.to_claim, []
            try:
                claimed = await self.bus.claim(ids)
            except BusDown as e:
                log.warning("cannot fetch signaling messages from the database: %s", e)
                continue
            for arn, client_id, frame in claimed:
                await self._deliver_here(arn, client_id, frame)

    async def _on_join(self, key: Key, token: str) -> None:
        joined = self.joins.get(key)
        if joined is None or joined.conn.ended:
            return
        if joined.token == token:
            joined.seen = True
        elif joined.seen:  # ours came first: the newer connection is elsewhere
            del self.joins[key]
            await self.hub.end(joined.conn)

    async def _on_listening(self) -> None:
        """(Re)connected: announcements sent meanwhile are lost, so treat ours as seen,
        and claim the messages sent meanwhile, which wait in the database."""
        for joined in list(self.joins.values()):
            joined.seen = True
        for key in [k for k in self.joins if self._here(k)]:
            try:
                await self._claim_waiting(key)
            except BusDown:
                return

    async def _claim_waiting(self, key: Key) -> None:
        for frame in await self.bus.claim_waiting(*key):
            await self._deliver_here(*key, frame)

    async def _deliver_here(self, arn: str, client_id: str | None, frame: str) -> None:
        if client_id == STORAGE:
            if self.storage is not None:
                await self.storage.receive_relayed(arn, frame)
        else:
            await self.hub.deliver_here(arn, client_id, frame)

    def _here(self, key: Key) -> bool:
        arn, client_id = key
        if client_id == STORAGE:
            return self.storage is not None and self.storage.hosts(arn)
        conn = self.hub.masters.get(arn) if client_id is None else \
            self.hub.viewers.get(arn, {}).get(client_id)
        return conn is not None and not conn.ended

    def _message_ttl(self, channel_arn: str) -> float:
        """The channel's MessageTtlSeconds, as its connections here were given it (the
        sender is one of them)."""
        conns = [self.hub.masters.get(channel_arn),
                 *self.hub.viewers.get(channel_arn, {}).values()]
        return next((c.message_ttl_s for c in conns if c is not None), DEFAULT_TTL_S)
