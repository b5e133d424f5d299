"""WebRTC ingestion against a real `kvslite serve` and coturn: a Python master (the
`websockets` client for signaling, aiortc for media) joins the storage session and
streams H.264 whose frames carry their own index, plus Opus; boto3 then reads the stream
as anything PutMedia wrote: fragments cut at IDRs, the H.264 byte-identical to what the
master sent, GetImages frame-exact, an AAC track."""

from __future__ import annotations

import asyncio
import base64
import io

import av
import numpy as np
import pytest
from botocore.exceptions import ClientError
from kvs_media import mkv_events, wait_until
from PIL import Image
from test_signaling_ws import create_channel
from webrtc_master import (
    FPS,
    GOP,
    annexb_to_avcc,
    enable_storage,
    encode_h264,
    run_master,
)

from kvslite.media import synthetic

SECONDS = 6
FRAMES = FPS * SECONDS
EXTRA = GOP  # one more GOP after them: the last frames sit in the receiver's jitter buffer


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
    # the Opus tone, stored as AAC: decoded, a 440 Hz tone about as long as the video
    with av.open(io.BytesIO(media)) as container:
        audio = np.concatenate([frame.to_ndarray().mean(axis=0) for frame in
                                container.decode(container.streams.audio[0])])
        rate = container.streams.audio[0].codec_context.sample_rate
    video_s = (FRAMES + EXTRA - 1) / FPS
    assert 0.8 * video_s <= len(audio) / rate <= video_s + 1.0, (len(audio) / rate, video_s)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spectrum) * rate / len(audio) - 440) < 5

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
        assert synthetic.read_frame_index(image) == offset_ms // 40, offset_ms


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
