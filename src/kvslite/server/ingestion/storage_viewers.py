"""Viewers of a storage session (JoinStorageSessionAsViewer, WEBRTC-NOTES §6): each gets
the master's live media as the storage peer receives it, forwarded without re-encoding.

A viewer connects to the channel's signaling WebSocket as VIEWER with its ClientId and
calls JoinStorageSessionAsViewer; the storage session then sends it an SDP offer (H.264
and Opus, send-only) over that WebSocket, and the viewer answers. The hub sends what a
viewer says to the master through its relay; `ViewerMessages` wraps that relay so that
what a joined viewer says goes to the storage session instead.

The master's H.264 access units and Opus packets go to each viewer's tracks as
`av.Packet`s: aiortc's sender packetizes a packet as it is (its encoders' `pack`), so
the viewer gets the bytes the master sent. A viewer's video starts at an IDR (the master
is asked for one when a viewer joins); a viewer too slow to take its packets loses them
up to the next IDR, and never holds the master or the recording back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction

import av
from aiortc.mediastreams import MediaStreamTrack

from kvslite.server.ingestion.storage_peer import CLOCKS, SignaledPeer, is_idr
from kvslite.server.signaling.hub import Connection, Relay
from kvslite.server.signaling.turn import IceServer

MAX_VIEWERS = 3  # AWS's viewers per storage session
MAX_QUEUED = 100  # packets a viewer may fall behind before it skips to the next IDR


class ForwardedTrack(MediaStreamTrack):
    """The master's packets for one viewer, in order; video from an IDR on."""

    def __init__(self, kind: str, time_base: Fraction):
        super().__init__()
        self.kind, self.time_base = kind, time_base
        self.queue: asyncio.Queue[av.Packet] = asyncio.Queue()
        self.waiting_for_idr = kind == "video"

    def push(self, data: bytes, rtp_time: int) -> None:
        if self.kind == "video" and (self.waiting_for_idr or
                                     self.queue.qsize() >= MAX_QUEUED):
            if not is_idr(data):
                self.waiting_for_idr = True
                return
            self.waiting_for_idr = False
            self._clear()
        elif self.queue.qsize() >= MAX_QUEUED:
            self._clear()
        packet = av.Packet(data)
        packet.pts, packet.time_base = rtp_time, self.time_base
        self.queue.put_nowait(packet)

    def _clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    async def recv(self) -> av.Packet:
        return await self.queue.get()


class StorageViewer(SignaledPeer):
    def __init__(self, client_id: str, connection: Connection | None,
                 ice_servers: Sequence[IceServer]):
        super().__init__(ice_servers)
        self.client_id = client_id
        # the viewer's WebSocket when it joined: one reconnecting under the same ClientId
        # is another viewer, which talks to the master until it joins in turn
        self.connection = connection
        self.video = ForwardedTrack("video", CLOCKS["video/h264"])
        self.audio = ForwardedTrack("audio", CLOCKS["audio/opus"])

    async def offer(self) -> dict:
        """The SDP offer: the master's H.264 and Opus, send-only."""
        for track, mime in ((self.video, "video/H264"), (self.audio, "audio/opus")):
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            self._set_codecs(transceiver, track.kind, mime)
        return await self._offer()


class ViewerMessages:
    """The hub's relay, wrapped: a message from a viewer the storage session has joined
    (stamped with its `senderClientId` by the hub) goes to `to_session(channel_arn,
    client_id, message)`; everything else to the relay as before."""

    def __init__(self, relay: Relay, joined: Callable[[str, str], bool],
                 to_session: Callable[[str, str, dict], Awaitable[None]]):
        self.relay, self.is_joined, self.to_session = relay, joined, to_session

    async def deliver(self, channel_arn: str, client_id: str | None, text: str) -> bool:
        if client_id is None:  # to the master: from a viewer, or the storage session's own
            message = json.loads(text)
            viewer = message.get("senderClientId")
            if viewer is not None and self.is_joined(channel_arn, viewer):
                await self.to_session(channel_arn, viewer, message)
                return True
        return await self.relay.deliver(channel_arn, client_id, text)

    async def joined(self, conn: Connection) -> None:
        await self.relay.joined(conn)

    async def channel_deleted(self, channel_arn: str) -> None:
        await self.relay.channel_deleted(channel_arn)
