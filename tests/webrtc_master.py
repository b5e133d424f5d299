"""A WebRTC master in Python for the storage session's tests: the `websockets` client for
signaling, aiortc for media, ICE relayed through coturn (as on CI). Its H.264 frames carry
their own index (synthetic.render_frame), so what is archived can be checked frame by frame.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import re
import time

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from test_signaling_ws import master_url, received
from websockets.asyncio.client import connect

from kvslite.media import synthetic

FPS, GOP = 25, 25
VIDEO_CLOCK = fractions.Fraction(1, 90_000)


def encode_h264(count: int) -> list[bytes]:
    """Access units (Annex-B) of frames 0..count-1, an IDR every GOP, no B-frames: what a
    WebRTC camera sends."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 320, 240, "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = GOP
    codec.options = {"profile": "baseline", "tune": "zerolatency", "keyint_min": str(GOP),
                     "sc_threshold": "0", "bframes": "0"}
    units = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(synthetic.render_frame(i, fps=FPS), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        units += [bytes(p) for p in codec.encode(frame)]
    units += [bytes(p) for p in codec.encode(None)]
    assert len(units) == count
    return units


def annexb_to_avcc(unit: bytes) -> bytes:
    nals = [n for n in re.split(b"\x00\x00\x00?\x01", unit) if n]
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


class PacedVideo(MediaStreamTrack):
    """Pre-encoded access units at FPS, from when the connection is up: aiortc's sender
    packetizes an `av.Packet` as it is, without re-encoding."""
    kind = "video"

    def __init__(self, units: list[bytes], connected: asyncio.Event):
        super().__init__()
        self.units, self.connected, self.sent = units, connected, 0
        self.started = 0.0

    async def recv(self) -> av.Packet:
        await self.connected.wait()
        if self.sent == 0:
            self.started = time.monotonic()
        if self.sent >= len(self.units):
            self.stop()
            raise asyncio.CancelledError
        await asyncio.sleep(max(0.0, self.started + self.sent / FPS - time.monotonic()))
        packet = av.Packet(self.units[self.sent])
        packet.pts, packet.time_base = self.sent * 3600, VIDEO_CLOCK
        self.sent += 1
        return packet


class Tone(MediaStreamTrack):
    """20 ms frames of a 440 Hz tone, 48 kHz mono; aiortc encodes them to Opus."""
    kind = "audio"

    def __init__(self, connected: asyncio.Event):
        super().__init__()
        self.connected, self.samples, self.started = connected, 0, 0.0

    async def recv(self) -> av.AudioFrame:
        await self.connected.wait()
        if self.samples == 0:
            self.started = time.monotonic()
        await asyncio.sleep(max(0.0, self.started + self.samples / 48000 - time.monotonic()))
        t = (np.arange(960) + self.samples) / 48000
        frame = av.AudioFrame.from_ndarray(
            (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1),
            format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, self.samples
        frame.time_base = fractions.Fraction(1, 48000)
        self.samples += 960
        return frame


def enable_storage(server, channel_arn: str, stream_arn: str) -> None:
    server.client("kinesisvideo").update_media_storage_configuration(
        ChannelARN=channel_arn,
        MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"})


def ice_servers(server, channel_arn: str) -> list[RTCIceServer]:
    signaling = server.client("kinesis-video-signaling")
    answer = signaling.get_ice_server_config(ChannelARN=channel_arn, ClientId="master")
    return [RTCIceServer(urls=s["Uris"], username=s["Username"], credential=s["Password"])
            for s in answer["IceServerList"]]


class Master:
    """A master of `channel_arn`: its signaling WebSocket on one node, its API calls
    (JoinStorageSession, GetIceServerConfig) on whichever node a call names."""

    def __init__(self, channel_arn: str):
        self.channel_arn = channel_arn
        self.socket = None
        self.pc: RTCPeerConnection | None = None
        self.connected = asyncio.Event()
        self.video: PacedVideo | None = None

    async def connect(self, server) -> None:
        self.socket = await connect(master_url(server, self.channel_arn))

    async def join(self, server) -> dict:
        """JoinStorageSession through `server`; the storage session's offer, as received."""
        storage = server.client("kinesis-video-webrtc-storage")
        await asyncio.to_thread(storage.join_storage_session, channelArn=self.channel_arn)
        return await self.next("SDP_OFFER")

    async def next(self, message_type: str) -> dict:
        """The next message of this type the socket gets (others are skipped)."""
        while True:
            message = await received(self.socket, timeout=10)
            if message.get("messageType") == message_type:
                return message

    async def answer(self, server, offer: dict, units: list[bytes] | None) -> None:
        """Answer `offer` with a new peer connection sending `units` and a tone, or
        nothing at all (None: a master that answers but sends no media)."""
        self.pc = pc = RTCPeerConnection(RTCConfiguration(
            iceServers=ice_servers(server, self.channel_arn),
            iceTransportPolicy=RTCIceTransportPolicy.RELAY))  # through coturn, as on CI
        self.connected = connected = asyncio.Event()
        pc.on("connectionstatechange",
              lambda: connected.set() if pc.connectionState == "connected" else None)
        self.video = PacedVideo(units, connected) if units is not None else None
        sdp = json.loads(base64.b64decode(offer["messagePayload"]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp["sdp"], "offer"))
        for transceiver in pc.getTransceivers():
            if units is not None:
                track = self.video if transceiver.kind == "video" else Tone(connected)
                transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send("SDP_ANSWER", {"type": "answer", "sdp": pc.localDescription.sdp})

    async def send(self, action: str, payload: dict, **extra) -> None:
        """A message with no recipientClientId: for the storage session."""
        await self.socket.send(json.dumps({
            "action": action, **extra,
            "messagePayload": base64.b64encode(json.dumps(payload).encode()).decode()}))

    async def stream(self, frames: int | None = None) -> None:
        """Until `frames` (default: all) are sent, then the last packets' way through."""
        await asyncio.wait_for(self.connected.wait(), 15)
        assert self.video is not None
        while self.video.sent < (frames or len(self.video.units)):
            await asyncio.sleep(0.05)
        if frames is None:
            await asyncio.sleep(0.5)

    async def hang_up(self) -> None:
        if self.pc is not None:
            await self.pc.close()

    async def close(self) -> None:
        await self.hang_up()
        if self.socket is not None:
            await self.socket.close()


async def run_master(server, channel_arn: str, units: list[bytes]) -> dict:
    """Connect as master, JoinStorageSession, answer the storage offer, stream `units` and
    a tone, hang up. Returns the storage offer's signaling message."""
    master = Master(channel_arn)
    await master.connect(server)
    try:
        offer = await master.join(server)
        await master.answer(server, offer, units)
        await master.stream()
    finally:
        await master.close()
    return offer
