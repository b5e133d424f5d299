"""JoinStorageSessionAsViewer against a real `kvslite serve` and coturn: a Python aiortc
master streams into the storage session while a Python aiortc viewer joins it and gets the
master's live H.264 and Opus, forwarded without re-encoding: every video frame the viewer
receives is the master's, byte for byte, from an IDR on."""

from __future__ import annotations

import asyncio
import time
import base64
import json
import re

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from botocore.exceptions import ClientError
from test_signaling_ws import create_channel, master_url, offer, received, viewer_url
from webrtc_master import FPS, GOP, PacedVideo, Tone, enable_storage, encode_h264, ice_servers
from websockets.asyncio.client import connect

from kvslite.server.ingestion.storage_peer import use_pass_through

FRAMES = 8 * GOP


def nal_units(unit: bytes) -> list[bytes]:
    """An Annex-B access unit's NAL units (start codes of 3 or 4 bytes alike)."""
    return [n for n in re.split(b"\x00\x00\x00?\x01", unit) if n]


def payload(message: dict) -> dict:
    return json.loads(base64.b64decode(message["messagePayload"]))


def encoded(description) -> str:
    return base64.b64encode(json.dumps({"type": description.type, "sdp": description.sdp})
                            .encode()).decode()


def relay_only(server, channel_arn: str) -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(
        iceServers=ice_servers(server, channel_arn),
        iceTransportPolicy=RTCIceTransportPolicy.RELAY))  # through coturn, as on CI


async def answer(pc: RTCPeerConnection, socket, offer: dict) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(payload(offer)["sdp"], "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await socket.send(json.dumps({"action": "SDP_ANSWER",
                                  "messagePayload": encoded(pc.localDescription)}))


async def master_and_viewer(server, channel_arn: str, units: list[bytes]) -> dict:
    """The master streams `units` and a tone into the storage session; once it is
    connected, a viewer joins; returns what the viewer received."""
    storage = server.client("kinesis-video-webrtc-storage")
    master, viewer = relay_only(server, channel_arn), relay_only(server, channel_arn)
    connected = asyncio.Event()
    master.on("connectionstatechange",
              lambda: connected.set() if master.connectionState == "connected" else None)
    video = PacedVideo(units, connected)
    got: dict = {"video": [], "audio": 0}

    async def take(track) -> None:
        try:
            while True:
                packet = await track.recv()
                if track.kind == "video":
                    got["video"].append(bytes(packet))
                else:
                    got["audio"] += 1
        except MediaStreamError:
            pass

    viewer.on("track", lambda track: tasks.append(asyncio.ensure_future(take(track))))
    tasks: list[asyncio.Task] = []
    async with connect(master_url(server, channel_arn)) as master_socket, \
            connect(viewer_url(server, channel_arn, "viewer-1")) as viewer_socket:
        await asyncio.to_thread(storage.join_storage_session, channelArn=channel_arn)
        offer = await received(master_socket, timeout=10)
        await master.setRemoteDescription(RTCSessionDescription(payload(offer)["sdp"], "offer"))
        for transceiver in master.getTransceivers():
            transceiver.sender.replaceTrack(video if transceiver.kind == "video"
                                            else Tone(connected))
            transceiver.direction = "sendonly"
        await master.setLocalDescription(await master.createAnswer())
        await master_socket.send(json.dumps({"action": "SDP_ANSWER",  # for the storage session
                                             "messagePayload": encoded(master.localDescription)}))
        await asyncio.wait_for(connected.wait(), 15)

        await asyncio.to_thread(storage.join_storage_session_as_viewer,
                                channelArn=channel_arn, clientId="viewer-1")
        got["offer"] = await received(viewer_socket, timeout=10)
        await answer(viewer, viewer_socket, got["offer"])
        sending = time.monotonic() + 10 + len(units) / FPS  # paced at FPS once connected
        while video.sent < len(units):
            assert time.monotonic() < sending, f"{video.sent} of {len(units)} units sent"
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 5  # what the test asserts has come through the relays
        while len(got["video"]) < 3 * GOP and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        got["viewer_state"] = viewer.connectionState
    await viewer.close()
    await master.close()
    for task in tasks:
        task.cancel()
    return got


@pytest.mark.slow
def test_a_viewer_of_the_storage_session_gets_the_masters_frames_byte_identical(
        coturn, start_server):
    use_pass_through()  # the viewer's receivers hand out H.264 and Opus undecoded
    server = start_server(*coturn.kvslite_args())
    kvs = server.client("kinesisvideo")
    stream_arn = kvs.create_stream(StreamName="live", DataRetentionInHours=1)["StreamARN"]
    channel_arn = create_channel(server, "live")
    enable_storage(server, channel_arn, stream_arn)
    units = encode_h264(FRAMES)

    got = asyncio.run(master_and_viewer(server, channel_arn, units))

    offer = got["offer"]
    assert offer["messageType"] == "SDP_OFFER" and "senderClientId" not in offer
    assert "a=sendonly" in payload(offer)["sdp"] and "H264" in payload(offer)["sdp"]
    assert got["viewer_state"] == "connected"
    frames = [nal_units(f) for f in got["video"]]
    sent = [nal_units(u) for u in units]
    assert len(frames) >= 3 * GOP, len(frames)  # joined within the first GOPs
    start = sent.index(frames[0])
    assert start % GOP == 0  # from an IDR on
    # every frame forwarded in order, byte for byte (the last ones may still be in flight)
    assert frames == sent[start:start + len(frames)]
    assert len(frames) >= FRAMES - start - 2
    # Opus forwarded too, a 20 ms packet at a time, from the viewer's join (before the IDR
    # its video starts at) to the end
    assert got["audio"] >= 0.8 * (FRAMES - start) / FPS * 50, (got["audio"], start)


def join_as_viewer_error(server, channel_arn: str, client_id: str) -> tuple[str, int, str]:
    storage = server.client("kinesis-video-webrtc-storage")
    with pytest.raises(ClientError) as refused:
        storage.join_storage_session_as_viewer(channelArn=channel_arn, clientId=client_id)
    error = refused.value.response
    return (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"],
            error["Error"]["Message"])


def storage_channel(server) -> str:
    """A new channel "s" whose media is stored in a new stream "s"; its ARN."""
    kvs = server.client("kinesisvideo")
    stream_arn = kvs.create_stream(StreamName="s", DataRetentionInHours=1)["StreamARN"]
    channel_arn = create_channel(server, "s")
    enable_storage(server, channel_arn, stream_arn)
    return channel_arn


@pytest.mark.slow
def test_join_storage_session_as_viewer_refusals_and_viewer_limit(coturn, start_server):
    server = start_server(*coturn.kvslite_args())
    storage = server.client("kinesis-video-webrtc-storage")
    channel_arn = storage_channel(server)

    unknown = channel_arn.replace("/s/", "/nope/")
    assert join_as_viewer_error(server, unknown, "v")[:2] == ("ResourceNotFoundException", 404)
    code, status, message = join_as_viewer_error(server, channel_arn, "v")
    assert (code, status) == ("InvalidArgumentException", 400)
    assert "JoinStorageSession" in message  # no storage session yet

    async def viewers() -> list:
        async with connect(master_url(server, channel_arn)) as master_socket:
            await asyncio.to_thread(storage.join_storage_session, channelArn=channel_arn)
            await received(master_socket, timeout=10)  # the session's offer (left unanswered)
            refusals = [await asyncio.to_thread(join_as_viewer_error, server, channel_arn,
                                                "absent")]
            sockets = [await connect(viewer_url(server, channel_arn, f"v{i}"))
                       for i in range(4)]
            offers = []
            for i in range(3):
                await asyncio.to_thread(storage.join_storage_session_as_viewer,
                                        channelArn=channel_arn, clientId=f"v{i}")
                offers.append((await received(sockets[i], timeout=10))["messageType"])
            refusals.append(await asyncio.to_thread(join_as_viewer_error, server,
                                                    channel_arn, "v3"))
            for socket in sockets:
                await socket.close()
            return [offers, refusals]

    offers, refusals = asyncio.run(viewers())
    assert offers == ["SDP_OFFER"] * 3
    assert refusals[0][:2] == ("InvalidArgumentException", 400)
    assert "connect as viewer" in refusals[0][2]
    assert refusals[1][:2] == ("ClientLimitExceededException", 400)
    assert "maximum number of viewers connected to the session" in refusals[1][2]


@pytest.mark.slow
def test_a_viewer_reconnecting_under_the_same_client_id_talks_to_the_master(
        coturn, start_server):
    """The storage session serves the WebSocket that joined it; a new one under the same
    ClientId (a reloaded page) replaces it, and its offers go to the master as any viewer's,
    until it joins the session in turn."""
    server = start_server(*coturn.kvslite_args())
    storage = server.client("kinesis-video-webrtc-storage")
    channel_arn = storage_channel(server)

    async def reconnect() -> list[dict]:
        async with connect(master_url(server, channel_arn)) as master_socket:
            await asyncio.to_thread(storage.join_storage_session, channelArn=channel_arn)
            await received(master_socket, timeout=10)  # the session's offer (unanswered)
            async with connect(viewer_url(server, channel_arn, "v0")) as first:
                await asyncio.to_thread(storage.join_storage_session_as_viewer,
                                        channelArn=channel_arn, clientId="v0")
                assert (await received(first, timeout=10))["messageType"] == "SDP_OFFER"
                async with connect(viewer_url(server, channel_arn, "v0")) as second:
                    await second.send(offer("cmVsb2FkZWQ="))  # to the master
                    to_master = await received(master_socket, timeout=5)
                    await asyncio.to_thread(storage.join_storage_session_as_viewer,
                                            channelArn=channel_arn, clientId="v0")
                    return [to_master, await received(second, timeout=10)]

    to_master, session_offer = asyncio.run(reconnect())
    assert (to_master["messageType"], to_master["senderClientId"],
            to_master["messagePayload"]) == ("SDP_OFFER", "v0", "cmVsb2FkZWQ=")
    assert session_offer["messageType"] == "SDP_OFFER"  # joined again: the session offers
