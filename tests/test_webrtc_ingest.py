"""WebRTC ingestion against a real `kvslite serve` and coturn: a Python master (the
`websockets` client for signaling, aiortc for media) joins the storage session and
streams H.264 whose frames carry their own index, plus Opus; boto3 then reads the stream
as anything PutMedia wrote: fragments cut at IDRs, the H.264 byte-identical to what the
master sent, GetImages frame-exact, an AAC track."""

from __future__ import annotations

import asyncio
import base64
import fractions
import io
import json
import re
import time

import av
import numpy as np
import pytest
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from botocore.exceptions import ClientError
from kvs_media import mkv_events, wait_until
from PIL import Image
from test_signaling_ws import create_channel, master_url, received
from websockets.asyncio.client import connect

from kvslite.media import synthetic

FPS, GOP, SECONDS = 25, 25, 6
FRAMES = FPS * SECONDS
EXTRA = GOP  # one more GOP after them: the last frames sit in the receiver's jitter buffer
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


def frame_index(image: np.ndarray) -> int:
    """The index render_frame drew as 16 binary blocks (40%-75% of the height)."""
    height, width = image.shape[:2]
    y0, y1 = int(height * 0.4), int(height * 0.75)
    index = 0
    for bit in range(16):
        row, col = divmod(bit, 8)
        y = y0 + (y1 - y0) * (2 * row + 1) // 4
        x = width * (2 * col + 1) // 16
        index = index << 1 | int(image[y, x].mean() > 128)
    return index


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


async def run_master(server, channel_arn: str, units: list[bytes]) -> dict:
    """Connect as master, JoinStorageSession, answer the storage offer, stream `units` and
    a tone, hang up. Returns the storage offer's signaling message."""
    storage = server.client("kinesis-video-webrtc-storage")
    pc = RTCPeerConnection(RTCConfiguration(
        iceServers=ice_servers(server, channel_arn),
        iceTransportPolicy=RTCIceTransportPolicy.RELAY))  # through coturn, as on CI
    connected = asyncio.Event()
    pc.on("connectionstatechange",
          lambda: connected.set() if pc.connectionState == "connected" else None)
    video = PacedVideo(units, connected)
    async with connect(master_url(server, channel_arn)) as socket:
        await asyncio.to_thread(storage.join_storage_session, channelArn=channel_arn)
        offer = await received(socket, timeout=10)
        sdp = json.loads(base64.b64decode(offer["messagePayload"]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp["sdp"], "offer"))
        for transceiver in pc.getTransceivers():
            track = video if transceiver.kind == "video" else Tone(connected)
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        answer = {"type": "answer", "sdp": pc.localDescription.sdp}
        await socket.send(json.dumps({  # no recipientClientId: for the storage session
            "action": "SDP_ANSWER",
            "messagePayload": base64.b64encode(json.dumps(answer).encode()).decode()}))
        await asyncio.wait_for(connected.wait(), 15)
        while video.sent < len(units):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last packets' way through the relay
    await pc.close()
    return offer


@pytest.mark.slow
def test_a_masters_webrtc_media_is_archived_frame_exact(coturn, start_server):
    server = start_server(*coturn.kvslite_args())
    kvs = server.client("kinesisvideo")
    stream_arn = kvs.create_stream(StreamName="cam", DataRetentionInHours=1)["StreamARN"]
    channel_arn = create_channel(server, "cam")
    enable_storage(server, channel_arn, stream_arn)
    units = encode_h264(FRAMES + EXTRA)

    offer = asyncio.run(run_master(server, channel_arn, units))
    assert "senderClientId" not in offer and offer["messageType"] == "SDP_OFFER"

    archived = server.client("kinesis-video-archived-media")

    def fragments():
        listed = archived.list_fragments(StreamName="cam")["Fragments"]
        return sorted(listed, key=lambda f: f["ProducerTimestamp"])

    # the session ends when the master hangs up, its last fragment flushed
    wait_until(lambda: "storage session for" in server.output() and
               "ended (its master disconnected)" in server.output(), timeout=20,
               what="the storage session's end")
    listed = fragments()
    assert len(listed) == (FRAMES + EXTRA) // GOP, listed
    media = archived.get_media_for_fragment_list(
        StreamName="cam", Fragments=[f["FragmentNumber"] for f in listed])["Payload"].read()

    # the H.264 is what the master sent, in AVCC, a fragment per GOP starting at its IDR
    with av.open(io.BytesIO(media)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.audio[0].codec_context.name == "aac"
        stored = [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]
    # all but the very last frame, which never leaves the storage peer's jitter buffer (it
    # emits a frame when the next one starts)
    assert len(stored) == FRAMES + EXTRA - 1
    assert stored == [annexb_to_avcc(u) for u in units[:-1]]
    clusters = [e for e in mkv_events(media) if type(e).__name__ == "Cluster"]
    video = [[f for f in c.frames if f.track_number == 1] for c in clusters]
    assert [len(frames) for frames in video] == [GOP] * (len(listed) - 1) + [GOP - 1]
    assert all(frames[0].keyframe and not any(f.keyframe for f in frames[1:])
               for frames in video)
    assert sum(f.track_number == 2 for c in clusters for f in c.frames) > 0  # AAC frames

    # GetImages at exact producer timestamps shows exactly the frame on screen then
    start_ms = round(listed[0]["ProducerTimestamp"].timestamp() * 1000)
    for offset_ms in (0, 39, 40, 1000, 2520, 4999, 5960):
        images = archived.get_images(
            StreamName="cam", ImageSelectorType="PRODUCER_TIMESTAMP", Format="PNG",
            StartTimestamp=(start_ms + offset_ms) / 1000,
            EndTimestamp=(start_ms + offset_ms + 1) / 1000, SamplingInterval=3000)["Images"]
        assert len(images) == 1, (offset_ms, images)
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0]["ImageContent"]))
                                      ).convert("RGB"))
        assert frame_index(image) == offset_ms // 40, offset_ms


@pytest.mark.slow
def test_join_storage_session_refusals(start_server):
    server = start_server()
    storage = server.client("kinesis-video-webrtc-storage")
    channel_arn = create_channel(server, "plain")
    with pytest.raises(ClientError) as disabled:
        storage.join_storage_session(channelArn=channel_arn)
    assert disabled.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "media storage" in disabled.value.response["Error"]["Message"]
    assert disabled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    unknown = channel_arn.replace("/plain/", "/nope/")
    with pytest.raises(ClientError) as missing:
        storage.join_storage_session(channelArn=unknown)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
