"""Storage sessions: JoinStorageSession's work (WEBRTC-NOTES §6).

A master connected to a channel whose media storage is ENABLED calls JoinStorageSession;
kvslite's storage peer then sends it a fresh SDP offer over its signaling WebSocket (no
`senderClientId`), the master answers with no recipient (the hub routes that here,
`receive`), and its media is recorded into the channel's stream.

One session per channel: each JoinStorageSession replaces the channel's session (the
newest master wins), on this node or, in a cluster, on another (hosting.py: a lease per
channel names the node hosting its session, and the master's messages are relayed there).
The session also holds the stream's PutMedia lease, as PutMedia would: one writer per
stream.

A session ends, releasing its peer connection, ingest and lease, when it reaches its
maximum duration (AWS: 1 h; the master rejoins), when its master disconnects or is
replaced, when the peer connection fails, or when no media arrives within `no_media_s`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
from dataclasses import dataclass

import anyio.from_thread

from kvslite.server import metrics
from kvslite.server.api_errors import CLIENT_LIMIT_EXCEEDED, ApiError, invalid
from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.archive.fragment_events import EventConfigs
from kvslite.server.archive.fragments import Archive
from kvslite.server.archive.ingest import IngestSession
from kvslite.server.archive.leases import PUT_MEDIA, RENEW_EVERY_S, Leases
from kvslite.server.ingestion.hosting import Hosting
from kvslite.server.ingestion.recorder import Recorder
from kvslite.server.ingestion.storage_peer import SignaledPeer, StoragePeer
from kvslite.server.ingestion.storage_viewers import MAX_VIEWERS, StorageViewer, ViewerMessages
from kvslite.server.signaling.channels import ENABLED, Channels
from kvslite.server.signaling.hub import Connection, Hub
from kvslite.server.signaling.turn import IceServers
from kvslite.server.store.metadata import Lease, Stream

log = logging.getLogger("kvslite.ingestion")

MAX_DURATION_S = 3600  # AWS's storage session limit
NO_MEDIA_S = 15.0  # a session whose master sends nothing this long (from the offer) ends
WATCH_EVERY_S = 0.5


@dataclass(frozen=True)
class Settings:
    max_duration_s: float = MAX_DURATION_S
    no_media_s: float = NO_MEDIA_S
    fragment_deadline_s: float = 20.0


class StorageSessions:
    """The hub's `storage_peer`: this node's storage sessions, by channel ARN."""

    def __init__(self, hub: Hub, channels: Channels, ice_servers: IceServers,
                 control: ControlPlane, archive: Archive, leases: Leases, *,
                 settings: Settings = Settings(), event_configs: EventConfigs | None = None,
                 on_deliveries=lambda: None):
        self.hub, self.channels, self.ice_servers = hub, channels, ice_servers
        self.control, self.archive, self.leases = control, archive, leases
        self.settings = settings
        self.event_configs, self.on_deliveries = event_configs, on_deliveries
        self.sessions: dict[str, StorageSession] = {}
        self.hosting = Hosting(hub, leases)
        hub.storage_peer = self
        self.hosting.serve(self)
        hub.relay = ViewerMessages(hub.relay, self.has_viewer, self.from_viewer)

    # -- JoinStorageSession ----------------------------------------------------------------

    def join_from_thread(self, channel_arn: str) -> None:
        """JoinStorageSession, from a handler in the server's thread pool."""
        channel = self.channels.resolve(None, channel_arn)  # 404 for an unknown channel
        status, stream_arn = self.channels.media_storage(channel.arn)
        if status != ENABLED or stream_arn is None:
            raise invalid(f"The channel {channel.arn} has no media storage enabled "
                          "(UpdateMediaStorageConfiguration)")
        stream = self.control.resolve(None, stream_arn)
        anyio.from_thread.run(functools.partial(self.join, channel.arn, stream))

    async def join(self, channel_arn: str, stream: Stream) -> None:
        master = self.hub.masters.get(channel_arn)  # None: on another node, if any
        if master is None and not self.hosting.clustered:
            raise invalid(f"No master is connected to the channel {channel_arn} on this "
                          "endpoint: connect as master (ConnectAsMaster) first")
        old = self.sessions.pop(channel_arn, None)
        if old is not None:  # the newest master wins
            await old.end("a newer JoinStorageSession replaced it")
        host = await self.hosting.take(channel_arn)
        if host is None:
            raise ApiError(CLIENT_LIMIT_EXCEEDED, f"Another node hosts the storage session "
                           f"of {channel_arn} and did not end it; try later")
        lease = await self.hosting.wait_for(lambda: self.leases.acquire(PUT_MEDIA, stream))
        if lease is None:
            await asyncio.to_thread(self.leases.release, host)
            raise ApiError(CLIENT_LIMIT_EXCEEDED, f"The stream {stream.name} is being written "
                           "(PutMedia or a storage session elsewhere); try later")
        session = StorageSession(self, channel_arn, master, stream, lease, host)
        self.sessions[channel_arn] = session
        try:
            await session.start()
        except BaseException:
            await session.end("its offer could not be sent")
            raise

    # -- JoinStorageSessionAsViewer ------------------------------------------------------------

    def join_as_viewer_from_thread(self, channel_arn: str, client_id: str) -> None:
        channel = self.channels.resolve(None, channel_arn)  # 404 for an unknown channel
        anyio.from_thread.run(self.join_as_viewer, channel.arn, client_id)

    async def join_as_viewer(self, channel_arn: str, client_id: str) -> None:
        session = self.sessions.get(channel_arn)
        if session is None:
            raise invalid(f"The channel {channel_arn} has no storage session on this "
                          "endpoint: its master calls JoinStorageSession first")
        if client_id not in self.hub.viewers.get(channel_arn, {}):
            raise invalid(f"No viewer {client_id[:256]} is connected to the channel "
                          f"{channel_arn} on this endpoint: connect as viewer first")
        await session.add_viewer(client_id)

    def has_viewer(self, channel_arn: str, client_id: str) -> bool:
        """Whether the viewer connected as `client_id` now is one the session joined."""
        session = self.sessions.get(channel_arn)
        return session is not None and session.viewer_of(client_id) is not None

    async def from_viewer(self, channel_arn: str, client_id: str, message: dict) -> None:
        """A joined viewer's answer or candidate, as the hub relays it to a master."""
        session = self.sessions.get(channel_arn)
        viewer = session.viewer_of(client_id) if session is not None else None
        if viewer is None:
            raise invalid("the viewer left the storage session")
        await apply(viewer, {"action": message.get("messageType"),
                             "messagePayload": message.get("messagePayload")})

    # -- the hub's seam: the master's answer and candidates -----------------------------------

    async def receive(self, channel_arn: str, message: dict) -> None:
        session = self.sessions.get(channel_arn)
        if session is not None:
            await apply(session.peer, message)
        elif not await self.hosting.to_host(channel_arn, {"message": message}):
            raise invalid("a message without recipientClientId is for the storage session, "
                          "and the channel has none: call JoinStorageSession")

    # -- the relay's seam: what other nodes send to this node's sessions -----------------------

    def hosts(self, channel_arn: str) -> bool:
        return channel_arn in self.sessions

    async def receive_relayed(self, channel_arn: str, text: str) -> None:
        """A master's message from its node, or another node's takeover (never raises:
        nobody is there to answer)."""
        session = self.sessions.get(channel_arn)
        if session is None:
            return
        try:
            item = json.loads(text)
            if "end" in item:  # in the background: the relay goes on meanwhile
                session.end_soon(str(item["end"]))
            else:
                await apply(session.peer, item["message"])
        except Exception as e:  # an ApiError for garbage from the master, or a bug
            log.warning("storage session for %s: a relayed message was not used: %s",
                        channel_arn, e)

    def ended(self, session: StorageSession) -> None:
        if self.sessions.get(session.channel_arn) is session:
            del self.sessions[session.channel_arn]

    async def close_all(self) -> None:
        await asyncio.gather(*(s.end("the server is stopping")
                               for s in list(self.sessions.values())), return_exceptions=True)


class StorageSession:
    def __init__(self, owner: StorageSessions, channel_arn: str, master: Connection | None,
                 stream: Stream, lease: Lease, host: Lease):
        self.owner, self.channel_arn = owner, channel_arn
        self.master = master  # None: connected to another node (which relays its messages)
        self.stream, self.lease, self.host = stream, lease, host
        settings = owner.settings
        ingest = IngestSession(owner.archive, stream, timecode_type="ABSOLUTE",
                               producer_start_ms=None, lease=lease,
                               fragment_deadline_ms=int(settings.fragment_deadline_s * 1000),
                               event_configs=owner.event_configs,
                               on_deliveries=owner.on_deliveries)
        self.recorder = Recorder(ingest)
        name = channel_arn.split("/")[-2] if channel_arn.count("/") >= 2 else channel_arn
        self.ice_servers = owner.ice_servers.for_client(f"storage-{name}")
        self.peer = StoragePeer(self.ice_servers, on_video=self._video, on_audio=self._audio)
        self.viewers: dict[str, StorageViewer] = {}  # JoinStorageSessionAsViewer's, by ClientId
        self.started = time.monotonic()
        self.renewed = self.started
        self.ending: asyncio.Future | None = None
        self.watcher: asyncio.Task | None = None
        metrics.STORAGE_SESSIONS.inc()

    async def start(self) -> None:
        """Send the master a fresh offer; then watch the session until it ends."""
        offer = await self.peer.offer()
        payload = base64.b64encode(json.dumps(offer).encode()).decode("ascii")
        if not await self.owner.hub.send_to_master(self.channel_arn, "SDP_OFFER", payload):
            raise invalid(f"the master of {self.channel_arn} disconnected")
        self.peer.last_media = time.monotonic()  # the no-media bound runs from the offer
        self.watcher = asyncio.ensure_future(self._watch())
        log.info("storage session for %s into %s: offer sent", self.channel_arn,
                 self.stream.name)

    async def _video(self, access_unit: bytes, rtp_time: int, arrived_s: float) -> None:
        for viewer in self.viewers.values():
            viewer.video.push(access_unit, rtp_time)
        await self.recorder.video(access_unit, rtp_time, arrived_s)

    async def _audio(self, opus: bytes, rtp_time: int, arrived_s: float) -> None:
        for viewer in self.viewers.values():
            viewer.audio.push(opus, rtp_time)
        await self.recorder.audio(opus, rtp_time, arrived_s)

    async def add_viewer(self, client_id: str) -> None:
        """Send the viewer an offer of the master's media (a viewer joining again gets a
        fresh peer connection)."""
        old = self.viewers.pop(client_id, None)
        if old is not None:
            await old.close()
        if len(self.viewers) >= MAX_VIEWERS:
            raise ApiError(CLIENT_LIMIT_EXCEEDED, "The storage session has its maximum "
                           f"number of viewers connected to the session ({MAX_VIEWERS})")
        connection = self.owner.hub.viewers.get(self.channel_arn, {}).get(client_id)
        viewer = StorageViewer(client_id, connection, self.ice_servers)
        self.viewers[client_id] = viewer
        try:
            offer = await viewer.offer()
            text = json.dumps({"messageType": "SDP_OFFER", "messagePayload": base64.b64encode(
                json.dumps(offer).encode()).decode("ascii")})
            delivered = await self.owner.hub.relay.deliver(self.channel_arn, client_id, text)
        except BaseException:  # no offer went out: the viewer must not keep a slot
            await self._drop_viewer(client_id)
            raise
        if not delivered:
            await self._drop_viewer(client_id)
            raise invalid(f"the viewer {client_id[:256]} disconnected")
        self.peer.request_keyframe()  # the viewer's video starts at an IDR

    async def _drop_viewer(self, client_id: str) -> None:
        viewer = self.viewers.pop(client_id, None)
        if viewer is not None:
            await viewer.close()

    def viewer_of(self, client_id: str) -> StorageViewer | None:
        """The joined viewer whose WebSocket is the one connected as `client_id` now."""
        viewer = self.viewers.get(client_id)
        connected = self.owner.hub.viewers.get(self.channel_arn, {}).get(client_id)
        if viewer is None or connected is None or viewer.connection is not connected:
            return None
        return viewer

    def _gone_viewers(self) -> list[str]:
        return [client_id for client_id, viewer in self.viewers.items()
                if viewer.failed or self.viewer_of(client_id) is None]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            for client_id in self._gone_viewers():
                await self._drop_viewer(client_id)
            reason = self._why_end()
            if reason:
                self.end_soon(reason)
                return
            if time.monotonic() - self.renewed >= RENEW_EVERY_S:
                for lease, what in ((self.lease, "the stream"), (self.host, "the channel")):
                    if not await asyncio.to_thread(self.owner.leases.renew, lease):
                        metrics.LEASES_LOST.inc()
                        self.end_soon(f"its lease on {what} was lost")
                        return
                self.renewed = time.monotonic()

    def _why_end(self) -> str | None:
        now, settings = time.monotonic(), self.owner.settings
        if now - self.started >= settings.max_duration_s:
            return f"it reached its maximum duration ({settings.max_duration_s:g} s)"
        if self.master is not None and \
                self.owner.hub.masters.get(self.channel_arn) is not self.master:
            return "its master disconnected"
        if self.peer.failed:
            return "the peer connection failed"
        if now - self.peer.last_media >= settings.no_media_s:
            return f"the master sent no media for {settings.no_media_s:g} s"
        if self.recorder.error:
            return self.recorder.error
        return None

    def end_soon(self, reason: str) -> None:
        """Start releasing everything, once (the session holds the task)."""
        if self.ending is None:
            self.ending = asyncio.ensure_future(self._end(reason))

    async def end(self, reason: str) -> None:
        """Release everything, once; later calls wait for the first."""
        self.end_soon(reason)
        assert self.ending is not None
        await asyncio.shield(self.ending)

    async def _end(self, reason: str) -> None:
        self.owner.ended(self)
        if self.watcher is not None and self.watcher is not asyncio.current_task():
            self.watcher.cancel()
        try:
            for client_id in list(self.viewers):
                await self._drop_viewer(client_id)
            await self.peer.close()
            await self.recorder.close()
        finally:  # the stream first: a node taking over takes the channel, then the stream
            await asyncio.to_thread(self.owner.leases.release, self.lease)
            await asyncio.to_thread(self.owner.leases.release, self.host)
            metrics.STORAGE_SESSIONS.dec()
            log.info("storage session for %s ended (%s): %d fragments archived",
                     self.channel_arn, reason, self.recorder.fragments)


async def apply(peer: SignaledPeer, message: dict) -> None:
    """An SDP_ANSWER or ICE_CANDIDATE for one of the storage session's peer connections."""
    action = message.get("action") or message.get("Action")
    encoded = message.get("messagePayload") or message.get("MessagePayload")
    try:
        payload = json.loads(base64.b64decode(encoded or "", validate=True))
        if not isinstance(payload, dict):
            raise TypeError("not a JSON object")
        if action == "SDP_ANSWER":
            await peer.accept_answer(payload)
        elif action == "ICE_CANDIDATE":
            await peer.add_candidate(payload)
        else:
            raise ValueError(f"the storage session takes SDP_ANSWER and ICE_CANDIDATE, "
                             f"not {str(action)[:32]}")
    except Exception as e:  # garbage from the master or viewer: its STATUS_RESPONSE says why
        raise invalid(f"the storage session could not use the {str(action)[:32]}: "
                      f"{str(e)[:200]}") from e
