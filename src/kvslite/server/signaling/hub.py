"""The signaling hub: who is connected to which channel, and where each message goes.

Routing follows AWS (WEBRTC-NOTES §4.2-4.4):

- viewer -> the channel's master, stamped with `senderClientId`; held for the channel's
  MessageTtlSeconds while no master is connected, delivered when one connects, else dropped;
- master -> the viewer named by `recipientClientId` (either casing of every key; unknown
  keys ignored); a message with an empty or absent recipient is for the storage session;
- a newer master, or a viewer reconnecting with the same ClientId, replaces the old
  connection, which gets GO_AWAY and is closed;
- no reply on success; STATUS_RESPONSE only for a failure, and only when the message
  carried a `correlationId`.

Seams:

- `Peer`: one client's socket as the hub sees it (`send`, `close`); the edge adapts a
  WebSocket to it (edge/websocket.py), tests use a list.
- `Relay`: how a message reaches its recipient. `LocalRelay` delivers to this process's
  connections (embedded mode); a cluster's (signaling/cluster.py, PostgreSQL LISTEN/NOTIFY)
  implements the same `deliver` and calls `Hub.deliver_here` on the node holding the
  recipient, and is told of each join (`joined`) to end older connections elsewhere and
  of each deletion (`channel_deleted`) to end the channel's connections elsewhere.
- `Hub.storage_peer`: where master messages for the storage session go (WebRTC
  ingestion, not built yet). While it is None they are dropped.
- `Hub.send_from`: a message from a viewer that is not a socket (SendAlexaOfferToMaster's
  one-shot viewer, signaling/alexa.py).

All methods run on the server's event loop; `channel_deleted_threadsafe` may be called
from any thread (the control plane's handlers run in a thread pool).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from kvslite.server import metrics
from kvslite.server.api_errors import CLIENT_LIMIT_EXCEEDED, INVALID_ARGUMENT, ApiError

MASTER = "MASTER"
VIEWER = "VIEWER"
SDP_ACTIONS = ("SDP_OFFER", "SDP_ANSWER")
ICE_ACTIONS = ("ICE_CANDIDATE",)
GO_AWAY = json.dumps({"messageType": "GO_AWAY"})
CORRELATION_ID = re.compile(r"[a-zA-Z0-9_.-]{1,256}")
HELD_PER_CHANNEL = 200  # messages waiting for a master; the oldest go first past it


@dataclass(frozen=True)
class Limits:
    """AWS's quotas (developer guide, "Kinesis Video Streams with WebRTC limits")."""
    max_viewers: int = 10  # per channel, besides its one master
    max_payload_bytes: int = 10_240  # messagePayload, base64 as sent
    sdp_per_s: float = 5  # SDP offers and answers per connection
    ice_per_s: float = 20  # ICE candidates per connection
    max_lifetime_s: float = 3600
    idle_timeout_s: float = 600


class Peer(Protocol):
    async def send(self, text: str) -> None: ...

    async def close(self) -> None: ...


class Relay(Protocol):
    async def deliver(self, channel_arn: str, client_id: str | None, text: str) -> bool:
        """Hand `text` to the channel's master (client_id None) or the named viewer,
        wherever connected; False if nobody took it."""

    async def joined(self, conn: Connection) -> None:
        """A connection joined here (after any it replaced here was ended)."""

    async def channel_deleted(self, channel_arn: str) -> None:
        """The channel was deleted through this node (whose connections to it are ended):
        end its connections and drop its messages wherever they are."""


class StoragePeer(Protocol):
    async def receive(self, channel_arn: str, message: dict) -> None: ...


@dataclass(eq=False)
class RateLimit:
    """A token bucket: `per_s` messages a second, bursts of as many (at least one)."""
    per_s: float
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> bool:
        burst = max(1.0, self.per_s)
        if self.tokens < 0:
            self.tokens = burst
        else:
            self.tokens = min(burst, self.tokens + (now - self.updated) * self.per_s)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class Connection:
    channel_arn: str
    role: str
    client_id: str | None  # a viewer's X-Amz-ClientId; None for the master
    peer: Peer
    message_ttl_s: float
    opened: float
    last_active: float
    limits: dict[str, RateLimit] = field(default_factory=dict)
    ended: bool = False


@dataclass(eq=False)
class Held:
    text: str
    sender: Connection
    correlation_id: str | None
    timer: asyncio.TimerHandle | None = None


class LocalRelay:
    """Delivery within this process: the embedded mode's relay."""

    def __init__(self, hub: Hub):
        self.hub = hub

    async def deliver(self, channel_arn: str, client_id: str | None, text: str) -> bool:
        return await self.hub.deliver_here(channel_arn, client_id, text)

    async def joined(self, conn: Connection) -> None:
        pass  # one process: the hub itself replaces connections and hands over held ones

    async def channel_deleted(self, channel_arn: str) -> None:
        pass  # one process: the hub has ended them all


class Hub:
    storage_peer: StoragePeer | None = None  # the storage session's seam (not built yet)

    def __init__(self, limits: Limits = Limits(), relay: Relay | None = None,
                 clock=time.monotonic):
        self.limits = limits
        self.relay: Relay = relay or LocalRelay(self)
        self.clock = clock
        self.masters: dict[str, Connection] = {}
        self.viewers: dict[str, dict[str | None, Connection]] = {}  # by ClientId
        self.held: dict[str, deque[Held]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- connections --------------------------------------------------------------------

    def admit(self, channel_arn: str, role: str, client_id: str | None) -> None:
        """Refuse (ClientLimitExceeded) a viewer the channel has no room for; a viewer
        reconnecting with its ClientId takes its own old place."""
        viewers = self.viewers.get(channel_arn, {})
        if role == VIEWER and client_id not in viewers and \
                len(viewers) >= self.limits.max_viewers:
            raise ApiError(CLIENT_LIMIT_EXCEEDED,
                           f"the channel has its maximum of {self.limits.max_viewers} "
                           "viewers connected")

    async def join(self, channel_arn: str, role: str, client_id: str | None, peer: Peer,
                   *, message_ttl_s: float) -> Connection:
        """Register an accepted connection, replacing the one it supersedes; a master
        gets the messages held for it."""
        self.loop = asyncio.get_running_loop()
        self.admit(channel_arn, role, client_id)
        now = self.clock()
        conn = Connection(channel_arn, role, client_id, peer, message_ttl_s, now, now, {
            "SDP": RateLimit(self.limits.sdp_per_s), "ICE": RateLimit(self.limits.ice_per_s)})
        if role == MASTER:
            old = self.masters.get(channel_arn)
            self.masters[channel_arn] = conn
        else:
            viewers = self.viewers.setdefault(channel_arn, {})
            old = viewers.get(client_id)
            viewers[client_id] = conn
        metrics.SIGNALING_CONNECTIONS.labels(role.lower()).inc()
        if old is not None:
            await self.end(old)
        if role == MASTER:
            await self._deliver_held(channel_arn, conn)
        await self.relay.joined(conn)
        return conn

    def leave(self, conn: Connection) -> None:
        """The connection is gone: forget it (unless a newer one already took its place)."""
        if conn.ended:
            return
        conn.ended = True
        if conn.role == MASTER:
            if self.masters.get(conn.channel_arn) is conn:
                del self.masters[conn.channel_arn]
        else:
            viewers = self.viewers.get(conn.channel_arn, {})
            if viewers.get(conn.client_id) is conn:
                del viewers[conn.client_id]
                if not viewers:
                    del self.viewers[conn.channel_arn]
        metrics.SIGNALING_CONNECTIONS.labels(conn.role.lower()).dec()

    async def end(self, conn: Connection) -> None:
        """GO_AWAY, then close: the SDKs reconnect on it."""
        if conn.ended:
            return
        self.leave(conn)
        try:
            await conn.peer.send(GO_AWAY)
        finally:
            await conn.peer.close()

    def time_left(self, conn: Connection) -> float:
        """Seconds until the connection's lifetime or idle time runs out (then `end` it)."""
        now = self.clock()
        return min(conn.opened + self.limits.max_lifetime_s,
                   conn.last_active + self.limits.idle_timeout_s) - now

    async def go_away_all(self) -> None:
        """Server shutdown: every connection gets GO_AWAY and is closed."""
        await asyncio.gather(*(self.end(c) for c in self._all()), return_exceptions=True)

    async def channel_deleted(self, channel_arn: str) -> None:
        """Deleted through this node: its connections end here, then on every node."""
        await self.end_channel(channel_arn)
        await self.relay.channel_deleted(channel_arn)

    async def end_channel(self, channel_arn: str) -> None:
        """The channel is gone: GO_AWAY to its connections here; drop what it held here."""
        held = self.held.pop(channel_arn, deque())
        for item in held:
            if item.timer:
                item.timer.cancel()
        conns = [c for c in self._all() if c.channel_arn == channel_arn]
        await asyncio.gather(*(self.end(c) for c in conns), return_exceptions=True)

    def channel_deleted_threadsafe(self, channel_arn: str) -> None:
        """The control plane's on-delete hook: callable from any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.channel_deleted(channel_arn), loop)

    def _all(self) -> list[Connection]:
        conns = list(self.masters.values())
        for viewers in self.viewers.values():
            conns.extend(viewers.values())
        return conns

    # -- messages -----------------------------------------------------------------------

    async def receive(self, conn: Connection, text: str) -> None:
        """One frame from a client: route it, or answer a failure if it asked for one."""
        conn.last_active = self.clock()
        try:
            message = json.loads(text)
        except ValueError:
            metrics.SIGNALING_MESSAGES.labels("invalid").inc()
            return  # no correlationId to answer to
        if not isinstance(message, dict):
            metrics.SIGNALING_MESSAGES.labels("invalid").inc()
            return
        correlation_id = _field(message, "correlationId")
        try:
            await self._route(conn, message, correlation_id)
        except ApiError as e:
            metrics.SIGNALING_MESSAGES.labels(_result(e.code)).inc()
            await self._status(conn, correlation_id, e)

    async def _route(self, conn: Connection, message: dict, correlation_id) -> None:
        action = _field(message, "action")
        payload = _field(message, "messagePayload")
        if correlation_id is not None and (not isinstance(correlation_id, str) or
                                           not CORRELATION_ID.fullmatch(correlation_id)):
            raise ApiError(INVALID_ARGUMENT, "correlationId must match [a-zA-Z0-9_.-]{1,256}")
        if action not in SDP_ACTIONS + ICE_ACTIONS:
            raise ApiError(INVALID_ARGUMENT, f"unknown action {str(action)[:64]!r}")
        if not isinstance(payload, str) or not payload:
            raise ApiError(INVALID_ARGUMENT, "messagePayload is required")
        if len(payload) > self.limits.max_payload_bytes:
            raise ApiError(INVALID_ARGUMENT, f"messagePayload exceeds "
                                             f"{self.limits.max_payload_bytes} bytes")
        if not conn.limits["SDP" if action in SDP_ACTIONS else "ICE"].take(self.clock()):
            raise ApiError(CLIENT_LIMIT_EXCEEDED, f"too many {action} messages a second")
        if conn.role == VIEWER:
            text = json.dumps({"senderClientId": conn.client_id, "messageType": action,
                               "messagePayload": payload})
            if await self.relay.deliver(conn.channel_arn, None, text):
                metrics.SIGNALING_MESSAGES.labels("relayed").inc()
            else:
                self._hold(conn, text, correlation_id)
            return
        recipient = _field(message, "recipientClientId")
        if not recipient:  # the storage session's (WEBRTC-NOTES §0.4)
            await self._to_storage(conn, message)
            return
        text = json.dumps({"messageType": action, "messagePayload": payload})
        if not await self.relay.deliver(conn.channel_arn, str(recipient), text):
            raise ApiError(INVALID_ARGUMENT, "the recipient is not connected")
        metrics.SIGNALING_MESSAGES.labels("relayed").inc()

    async def send_from(self, conn: Connection, message: dict) -> None:
        """Route `message` as if `conn` had sent it; a refusal raises its ApiError."""
        await self._route(conn, message, None)

    async def deliver_here(self, channel_arn: str, client_id: str | None, text: str) -> bool:
        """Send to a connection of this process, if it is here."""
        if client_id is None:
            conn = self.masters.get(channel_arn)
        else:
            conn = self.viewers.get(channel_arn, {}).get(client_id)
        if conn is None or conn.ended:
            return False
        await conn.peer.send(text)
        return True

    async def _to_storage(self, conn: Connection, message: dict) -> None:
        if self.storage_peer is None:
            raise ApiError(INVALID_ARGUMENT, "a message without recipientClientId is for "
                                             "the storage session, and there is none")
        await self.storage_peer.receive(conn.channel_arn, message)
        metrics.SIGNALING_MESSAGES.labels("relayed").inc()

    # -- messages waiting for a master ---------------------------------------------------

    def _hold(self, sender: Connection, text: str, correlation_id: str | None) -> None:
        queue = self.held.setdefault(sender.channel_arn, deque())
        if len(queue) >= HELD_PER_CHANNEL:
            self._expire(sender.channel_arn, queue[0])
        item = Held(text, sender, correlation_id)
        item.timer = asyncio.get_running_loop().call_later(
            sender.message_ttl_s, self._expire, sender.channel_arn, item)
        queue.append(item)
        metrics.SIGNALING_MESSAGES.labels("held").inc()

    def forget_held(self, sender: Connection) -> bool:
        """Drop what `sender` still has waiting for a master; True if there was any."""
        queue = self.held.get(sender.channel_arn, deque())
        mine = [item for item in queue if item.sender is sender]
        for item in mine:
            queue.remove(item)
            if item.timer:
                item.timer.cancel()
        if not queue:
            self.held.pop(sender.channel_arn, None)
        return bool(mine)

    def _expire(self, channel_arn: str, item: Held) -> None:
        """Past MessageTtlSeconds with no master: dropped, the sender told if it asked."""
        queue = self.held.get(channel_arn)
        if queue is None or item not in queue:
            return
        queue.remove(item)
        if item.timer:
            item.timer.cancel()
        if not queue:
            del self.held[channel_arn]
        metrics.SIGNALING_MESSAGES.labels("expired").inc()
        if item.correlation_id and not item.sender.ended:
            asyncio.ensure_future(self._status(item.sender, item.correlation_id, ApiError(
                INVALID_ARGUMENT, "no master connected within the channel's "
                                  "MessageTtlSeconds")))

    async def _deliver_held(self, channel_arn: str, master: Connection) -> None:
        queue = self.held.pop(channel_arn, deque())
        for item in queue:
            if item.timer:
                item.timer.cancel()
            await master.peer.send(item.text)
            metrics.SIGNALING_MESSAGES.labels("relayed").inc()

    async def _status(self, conn: Connection, correlation_id, error: ApiError) -> None:
        if not isinstance(correlation_id, str) or not correlation_id or conn.ended:
            return
        await conn.peer.send(json.dumps({
            "messageType": "STATUS_RESPONSE",
            "statusResponse": {"correlationId": correlation_id, "errorType": error.code,
                               "statusCode": "400", "description": error.message,
                               "success": False}}))


def _field(message: dict, name: str):
    """A key in either casing: the JS SDK's `messagePayload`, the C SDK's `MessagePayload`."""
    if name in message:
        return message[name]
    return message.get(name[0].upper() + name[1:])


def _result(code: str) -> str:
    return "rate_limited" if code == CLIENT_LIMIT_EXCEEDED else "refused"
