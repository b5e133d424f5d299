"""The storage session's WebRTC peer: it offers to the master, and receives the master's
H.264 access units and Opus packets as sent (never decoded here).

aiortc (WEBRTC-NOTES §8) depayloads RTP into frames (Annex-B access units for H.264) and
hands each to a decoder thread; `use_pass_through` swaps the H.264 and Opus decoders for
one that returns the frame itself as an `av.Packet` (pts in RTP ticks from the first
frame: 90 kHz video, 48 kHz Opus), so `track.recv()` yields the bytes the camera encoded.
Video is stored as sent; Opus goes to `OpusToAac` (media/opus_aac.py), which decodes it.
Browsers send an IDR at the start and then mostly on request, so the peer asks for one
(RTCP PLI) at the start if the first frame is none, and whenever none came within
`keyframe_every_s`: fragments are cut at IDRs and must stay short.

aiortc gathers its candidates before the offer is made (they are in its SDP, no trickle);
the master's trickled candidates come in through `add_candidate`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
    rtcrtpreceiver,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp

from kvslite.server import metrics
from kvslite.server.signaling.turn import IceServer

log = logging.getLogger("kvslite.ingestion")

CLOCKS = {"video/h264": Fraction(1, 90_000), "audio/opus": Fraction(1, 48_000)}
IDR_NAL_TYPE = 5
KEYFRAME_EVERY_S = 2.0  # ask for an IDR when none came this long (fragments stay short)

# what the master's media goes to: (H.264 access unit in Annex-B or Opus packet, its RTP
# timestamp from the track's first frame, arrival in epoch seconds)
OnMedia = Callable[[bytes, int, float], Awaitable[None]]


class _PassThrough:
    """A 'decoder' that returns the frame it is given, undecoded."""

    def __init__(self, time_base: Fraction):
        self.time_base = time_base

    def decode(self, frame) -> list[av.Packet]:  # frame: aiortc's JitterFrame
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = self.time_base
        return [packet]


def use_pass_through() -> None:
    """Make aiortc's receivers hand out H.264 and Opus undecoded (idempotent).

    aiortc's decoder threads look `get_decoder` up in `aiortc.rtcrtpreceiver` each time a
    receiver's codec is set, and offer no per-receiver hook, so this is process-wide; the
    storage peer is the only aiortc receiver in a kvslite server. Other codecs keep
    aiortc's decoders (the offer names none)."""
    if getattr(rtcrtpreceiver.get_decoder, "passes_through", False):
        return
    stock = rtcrtpreceiver.get_decoder

    def get_decoder(codec):
        clock = CLOCKS.get(codec.mimeType.lower())
        return _PassThrough(clock) if clock else stock(codec)

    get_decoder.passes_through = True  # type: ignore[attr-defined]
    rtcrtpreceiver.get_decoder = get_decoder


def is_idr(access_unit: bytes) -> bool:
    """Whether an Annex-B access unit holds an IDR slice."""
    for start in _nal_starts(access_unit):
        if start < len(access_unit) and access_unit[start] & 0x1F == IDR_NAL_TYPE:
            return True
    return False


def _nal_starts(data: bytes):
    """Offsets of the first byte after each 00 00 01 start code."""
    at = data.find(b"\x00\x00\x01")
    while at >= 0:
        yield at + 3
        at = data.find(b"\x00\x00\x01", at + 3)


def retransmission_ssrcs(sdp: str) -> set[int]:
    """The RTX SSRCs an SDP declares (`a=ssrc-group:FID <media> <rtx>`)."""
    return {int(group.items[1]) for media in SessionDescription.parse(sdp).media
            for group in media.ssrc_group if group.semantic == "FID" and len(group.items) > 1}


def rtc_ice_servers(servers: Sequence[IceServer]) -> list[RTCIceServer]:
    """GetIceServerConfig's servers as aiortc takes them (TURN with its credentials)."""
    return [RTCIceServer(urls=list(s.uris), username=s.username or None,
                         credential=s.password or None) for s in servers]


class SignaledPeer:
    """A peer connection of the storage session, negotiated over signaling: it offers, the
    other side answers and trickles its candidates."""

    def __init__(self, ice_servers: Sequence[IceServer]):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=rtc_ice_servers(ice_servers)))
        self.tasks: list[asyncio.Task] = []

    def _set_codecs(self, transceiver: RTCRtpTransceiver, kind: str, mime: str) -> None:
        capabilities = RTCRtpReceiver.getCapabilities(kind)
        assert capabilities is not None  # aiortc knows both kinds
        transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType.lower()
                                         in (mime.lower(), f"{kind}/rtx")])

    async def _offer(self) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"type": "offer", "sdp": self.pc.localDescription.sdp}

    async def accept_answer(self, payload: dict) -> None:
        if payload.get("type") != "answer" or not isinstance(payload.get("sdp"), str):
            raise ValueError("the payload is not an SDP answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], "answer"))

    async def add_candidate(self, payload: dict) -> None:
        """A trickled ICE candidate: {candidate, sdpMid, sdpMLineIndex}; an empty one
        (the end of the other side's candidates) is ignored."""
        line = payload.get("candidate")
        if not isinstance(line, str) or not line:
            return
        candidate = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:")
                                       else line)
        candidate.sdpMid = payload.get("sdpMid")
        candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
        await self.pc.addIceCandidate(candidate)

    @property
    def failed(self) -> bool:
        return self.pc.connectionState in ("failed", "closed")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class StoragePeer(SignaledPeer):
    def __init__(self, ice_servers: Sequence[IceServer], *, on_video: OnMedia,
                 on_audio: OnMedia, keyframe_every_s: float = KEYFRAME_EVERY_S):
        use_pass_through()
        super().__init__(ice_servers)
        self.on_video, self.on_audio = on_video, on_audio
        self.keyframe_every_s = keyframe_every_s
        self.last_idr = 0.0  # monotonic; 0: none yet
        self.video_started = False  # a first video frame came (an IDR from a browser)
        self.last_media = time.monotonic()  # of any frame, for "the master sends nothing"
        self.keyframe_requests = 0
        self.pc.on("track", self._on_track)

    async def offer(self) -> dict:
        """The SDP offer (video H.264, audio Opus, both receive-only) with its
        candidates, as the signaling payload {"type", "sdp"}."""
        for kind, mime in (("video", "video/H264"), ("audio", "audio/opus")):
            self._set_codecs(self.pc.addTransceiver(kind, direction="recvonly"), kind, mime)
        return await self._offer()

    def request_keyframe(self) -> None:
        """Ask the master for an IDR now (a viewer joined)."""
        self.last_idr = 0.0

    # -- media ----------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")
            self.tasks.append(asyncio.ensure_future(self._receive(track, self.on_video)))
            self.tasks.append(asyncio.ensure_future(self._request_keyframes(receiver)))
        else:
            self.tasks.append(asyncio.ensure_future(self._receive(track, self.on_audio)))

    async def _receive(self, track: MediaStreamTrack, to: OnMedia) -> None:
        try:
            while True:
                packet = await track.recv()
                assert isinstance(packet, av.Packet)  # the pass-through decoders hand over packets
                arrived = time.time()
                self.last_media = time.monotonic()
                data = bytes(packet)
                if track.kind == "video":
                    self.video_started = True
                    if is_idr(data):
                        self.last_idr = self.last_media
                await to(data, int(packet.pts or 0), arrived)
        except MediaStreamError:
            pass  # the track ended

    async def _request_keyframes(self, receiver: RTCRtpReceiver) -> None:
        """PLI at the start if the first frame is no IDR, and whenever no IDR came within
        the bound. (Not before the first frame: a browser starts with an IDR, and a PLI
        then would make a second one at once, a one-frame first fragment.)"""
        while True:
            await asyncio.sleep(0.2)
            if not self.video_started or \
                    time.monotonic() - self.last_idr < self.keyframe_every_s:
                continue
            sources = self._media_ssrcs(receiver)  # reads the SDP: only when a PLI is due
            if not sources:
                continue
            await receiver._send_rtcp_pli(sources[0])  # aiortc has no public call
            self.keyframe_requests += 1
            metrics.STORAGE_KEYFRAME_REQUESTS.inc()
            self.last_idr = time.monotonic()  # give the master a bound to answer in

    def _media_ssrcs(self, receiver: RTCRtpReceiver) -> list[int]:
        """The SSRCs the master's video came from lately, but its RTX ones: aiortc lists
        those too, and browsers probe bandwidth with RTX padding from the start, so the
        first source may be RTX; an encoder ignores a PLI for it (Chromium's did for the
        10 s aiortc keeps a source, leaving a 10 s first fragment)."""
        remote = self.pc.remoteDescription
        rtx = retransmission_ssrcs(remote.sdp) if remote is not None else set()
        return [s.source for s in receiver.getSynchronizationSources() if s.source not in rtx]
