"""WebRTC ingestion with a real client: AWS's WebRTC JS SDK in headless Chromium as MASTER.

The page (tests/webrtc_js/page.js) does what the SDK's example does in ingestion mode:
DescribeMediaStorageConfiguration finds storage ENABLED, GetSignalingChannelEndpoint adds
WEBRTC, the master opens signaling, calls JoinStorageSession (retried about every 6 s until
the storage session's offer arrives) and answers that offer with Chromium's fake camera and
microphone (H.264 and Opus), relayed through coturn. After STREAM_SECONDS of it, boto3
reads the stream as anything PutMedia wrote: fragments, GetImages, HLS and GetClip.
"""

from __future__ import annotations

import base64
import io
import itertools
import time
from datetime import timedelta

import av
import boto3
import numpy as np
import pytest
from botocore.config import Config
from conftest import REGION
from engines import need
from kvs_media import wait_until
from PIL import Image
from webrtc_pages import (  # noqa: F401 - the *_fixture functions: fixtures used here
    CHANNEL,
    ESBUILD,
    KEY,
    NPM_PACKAGES,
    SECRET,
    Peer,
    browser_fixture,
    bundle_fixture,
    page_origin_fixture,
)

pytestmark = pytest.mark.slow  # a browser, coturn and 30 s of live media

need(ESBUILD.exists(), NPM_PACKAGES)

# The figure. It dominates this test's run time; shorter would cover fewer
# keyframe requests and GetImages samples, so it stays 30.
STREAM_SECONDS = 30
STREAM = "front-door-recording"
AWS_MAX_FRAGMENT_S = 20  # AWS's bound on a fragment's duration
KEYFRAME_EVERY_S = 2.0  # the storage peer asks for an IDR when none came this long
IMAGE_EVERY_MS = 3000
AUDIO_RATE, AAC_FRAME = 48_000, 1024  # Opus's rate kept, AAC-LC's frame


@pytest.fixture
def kvs(start_server, certificate, coturn, page_origin):
    """kvslite over TLS with SigV4 (the SDK insists on wss://), the page's origin allowed,
    coturn handed out for ICE; a signaling channel whose media storage records STREAM."""
    cert, key = certificate
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key),
                          "--access-key-id", KEY, "--secret-access-key", SECRET,
                          "--cors-allow-origins", page_origin, *coturn.kvslite_args())
    server.https = f"https://127.0.0.1:{server.port}"
    server.aws = lambda service: boto3.client(
        service, endpoint_url=server.https, region_name=REGION, aws_access_key_id=KEY,
        aws_secret_access_key=SECRET, verify=str(cert), config=Config(retries={"max_attempts": 1}))
    kinesis = server.aws("kinesisvideo")
    server.channel_arn = kinesis.create_signaling_channel(ChannelName=CHANNEL)["ChannelARN"]
    stream_arn = kinesis.create_stream(StreamName=STREAM, DataRetentionInHours=1)["StreamARN"]
    kinesis.update_media_storage_configuration(
        ChannelARN=server.channel_arn,
        MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"})
    kinesis.close()  # a kept-alive connection would hold up the server's shutdown
    return server


def stream_for(master: Peer, seconds: float) -> tuple[dict, float]:
    """Let the connected master send for `seconds`, then hang up; (its last state, how
    long it was connected)."""
    state = master.wait_for("peer.connectionState === 'connected'")
    connected = time.monotonic()
    time.sleep(seconds)
    state = master.wait_for("peer.framesEncoded > 0")
    master.close()
    return state, time.monotonic() - connected


def decoded_image(image: dict) -> np.ndarray:
    assert "Error" not in image, image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image["ImageContent"])))
                      .convert("RGB"), dtype=np.int16)


def changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a - b).max(axis=2) > 48).sum())


def decode_all(source) -> dict:
    """Frames decoded per stream type, the stream types, the audio codec and its rate."""
    counts = {"video": 0, "audio": 0}
    with av.open(source, timeout=20) as container:
        kinds = sorted(s.type for s in container.streams)
        audio = container.streams.audio[0].codec_context
        for frame in container.decode(*container.streams):
            counts["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
    return {**counts, "kinds": kinds, "audio_codec": (audio.name, audio.sample_rate)}


def test_the_sdks_master_is_recorded_and_plays_back(kvs, browser, page_origin):
    master = Peer(browser, page_origin, kvs.https, "MASTER")
    state, connected_s = stream_for(master, STREAM_SECONDS)
    # one JoinStorageSession was enough: its offer came within the first retry interval
    assert (state["errors"], state["ingestion"], state["joins"], state["storageOffers"]) == \
        ([], True, 1, 1)
    assert sorted(state["codecs"]) == ["audio/opus", "video/H264"]
    assert state["audioPacketsSent"] > 0
    wait_until(lambda: "ended (its master disconnected)" in kvs.output(), timeout=20,
               what="the storage session's end")

    archived = kvs.aws("kinesis-video-archived-media")
    fragments = sorted(archived.list_fragments(StreamName=STREAM)["Fragments"],
                       key=lambda f: f["ProducerTimestamp"])
    lengths_s = [f["FragmentLengthInMilliseconds"] / 1000 for f in fragments]
    start = fragments[0]["ProducerTimestamp"]
    end = fragments[-1]["ProducerTimestamp"] + timedelta(seconds=lengths_s[-1])
    covered_s = (end - start).total_seconds()
    stored = decode_all(io.BytesIO(archived.get_media_for_fragment_list(
        StreamName=STREAM, Fragments=[f["FragmentNumber"] for f in fragments])["Payload"].read()))
    print(f"\n{len(fragments)} fragments, {lengths_s} s, covering {covered_s:.2f} s of "
          f"{connected_s:.2f} s connected; sent {state['framesEncoded']} frames, stored {stored}")
    assert (stored["kinds"], stored["audio_codec"]) == (["audio", "video"], ("aac", AUDIO_RATE))
    # every frame the camera encoded, but those sent between the page's last statistics
    # (every 250 ms: 5 frames at the fake camera's 20 fps) and its hang-up, and the one
    # left in the storage peer's jitter buffer
    assert abs(stored["video"] - state["framesEncoded"]) <= 10
    # AAC (1024 samples a frame) for as long as the video: the audio may start up to a
    # frame after the video and end up to one before it
    audio_s = stored["audio"] * AAC_FRAME / AUDIO_RATE
    assert covered_s - 0.25 <= audio_s <= covered_s + 0.05

    # ~30 s recorded: the media starts within a second of the connection and all of it is
    # archived but the frame still in the jitter buffer when the master hangs up
    assert connected_s - 1.5 <= covered_s <= connected_s
    # fragments cut at the IDRs the storage peer asks for: within AWS's bound and the
    # peer's own (its request every KEYFRAME_EVERY_S plus the round trip to the encoder)
    assert max(lengths_s) <= min(AWS_MAX_FRAGMENT_S, KEYFRAME_EVERY_S + 1.0)
    assert len(fragments) >= covered_s // (KEYFRAME_EVERY_S + 1.0)
    # back to back: each fragment starts where the one before it ended
    for before, after in itertools.pairwise(fragments):
        gap_s = (after["ProducerTimestamp"] - before["ProducerTimestamp"]).total_seconds() - \
            before["FragmentLengthInMilliseconds"] / 1000
        assert abs(gap_s) < 0.1, (before, after)

    # GetImages every 3 s: decodable, and Chromium's fake camera animates, so they differ
    samples = STREAM_SECONDS * 1000 // IMAGE_EVERY_MS  # at 0, 3, ... 27 s (the end included)
    images = archived.get_images(
        StreamName=STREAM, ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start,
        EndTimestamp=start + timedelta(milliseconds=(samples - 1) * IMAGE_EVERY_MS),
        SamplingInterval=IMAGE_EVERY_MS, Format="JPEG")["Images"]
    assert len(images) == samples, images
    pictures = [decoded_image(image) for image in images]
    assert {p.shape for p in pictures} == {(480, 640, 3)}
    # the fake camera draws a turning disc sector and its clock on flat green: thousands of
    # pixels change in 3 s, where JPEG's noise on the flat green changes none this much
    changed = [changed_pixels(a, b) for a, b in itertools.pairwise(pictures)]
    assert min(changed) > 500, changed

    # HLS plays video and AAC audio, the whole recording
    url = archived.get_hls_streaming_session_url(
        StreamName=STREAM, PlaybackMode="ON_DEMAND",
        HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                             "TimestampRange": {"StartTimestamp": start,
                                                "EndTimestamp": end}})["HLSStreamingSessionURL"]
    hls = decode_all(url)
    assert hls == stored  # every frame plays

    # GetClip: an MP4 with the same video and audio
    clip = archived.get_clip(
        StreamName=STREAM,
        ClipFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                              "TimestampRange": {"StartTimestamp": start,
                                                 "EndTimestamp": end}})
    assert clip["ContentType"] == "video/mp4"
    mp4 = decode_all(io.BytesIO(clip["Payload"].read()))
    assert (mp4["kinds"], mp4["audio_codec"], mp4["video"]) == \
        (stored["kinds"], stored["audio_codec"], stored["video"])
    # the clip ends where the range does, at the last video frame's end: the audio past it
    # (at most two AAC frames, 43 ms, seen 1 or 2) is not in it
    assert stored["audio"] - 2 <= mp4["audio"] <= stored["audio"]
    assert "Traceback" not in kvs.output()
