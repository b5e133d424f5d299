"""Fragment selection by overlap, alike in every read: a fragment covers the half-open
[start, start + duration), so one that ends exactly where a range starts is not in it.

One stream, "overlap-gap": 4 fragments of 1 s at START_MS .. START_MS + 4000, nothing until
a second copy at START_MS + 10 000. GetClip, HLS, GetMedia and GetImages each read across
the boundaries.
"""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request

import av
import pytest

from kvs_media import persisted_numbers, put_mkv
from kvslite.media import mkv, synthetic

START_MS = (int(time.time()) - 2 * 3600) * 1000  # an old recording, on whole seconds
GAP_COPY_MS = START_MS + 10_000


@pytest.fixture(scope="module")
def server(module_servers):
    # sampling intervals below the 3 s default, so GetImages can sample twice a second
    return module_servers("--min-sampling-interval-ms", "1")


@pytest.fixture(scope="module")
def kvs(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


@pytest.fixture(scope="module")
def overlap_stream(server, kvs, h264):
    kvs.create_stream(StreamName="overlap-gap", DataRetentionInHours=24)
    numbers = []
    for start in (START_MS, GAP_COPY_MS):
        acks = put_mkv(server.port, "overlap-gap", synthetic.to_mkv(h264, start))
        numbers += persisted_numbers(acks)
    assert len(numbers) == 8
    return numbers


def producer_range(start_ms, end_ms):
    return {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}}


def test_get_clip_leaves_out_a_fragment_that_ends_at_the_range_start(archived, overlap_stream,
                                                                     h264):
    clip = archived.get_clip(StreamName="overlap-gap",
                             ClipFragmentSelector=producer_range(START_MS + 1000,
                                                                 START_MS + 2500))
    with av.open(io.BytesIO(clip["Payload"].read())) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == 50  # fragments [1000, 2000) and [2000, 3000), not [0, 1000)
    first_shown = h264.packets[25][2]  # the keyframe at 1000 ms
    assert min(packets, key=lambda p: p.pts).is_keyframe
    assert bytes(packets[0]) == first_shown


def test_hls_on_demand_leaves_out_a_fragment_that_ends_at_the_range_start(
        archived, overlap_stream):
    url = archived.get_hls_streaming_session_url(
        StreamName="overlap-gap", PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=producer_range(START_MS + 3000, GAP_COPY_MS + 500)
    )["HLSStreamingSessionURL"]
    playlist = urllib.request.urlopen(
        url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"), timeout=10).read().decode()
    listed = [line.rsplit("=", 1)[1] for line in playlist.splitlines()
              if line.startswith("getMP4MediaFragment")]
    assert listed == [overlap_stream[3], overlap_stream[4]]
    # the session does not serve the fragment that ends at its start either
    segment = url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4")
    assert urllib.request.urlopen(f"{segment}&FragmentNumber={overlap_stream[3]}",
                                  timeout=10).status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{segment}&FragmentNumber={overlap_stream[2]}", timeout=10)
    assert (e.value.code, e.value.headers["x-amzn-ErrorType"]) == \
        (404, "ResourceNotFoundException")


def test_get_media_from_the_end_of_a_fragment_before_a_gap_starts_after_the_gap(
        server, overlap_stream):
    media = server.client("kinesis-video-media")
    response = media.get_media(StreamName="overlap-gap", StartSelector={
        "StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": (START_MS + 4000) / 1000})
    reader, tags = mkv.MkvReader(), {}
    try:
        deadline = time.monotonic() + 20
        while "AWS_KINESISVIDEO_FRAGMENT_NUMBER" not in tags and time.monotonic() < deadline:
            chunk = response["Payload"]._raw_stream.read1(65536)
            if not chunk:
                break
            for event in reader.feed(chunk):
                if isinstance(event, mkv.Tags):
                    tags.update(event.tags)
    finally:
        response["Payload"].close()
    assert tags["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == overlap_stream[4]


def test_get_images_at_the_end_of_a_fragment_before_a_gap_is_no_media(archived,
                                                                      overlap_stream, h264):
    def image_at(t_ms):
        [image] = archived.get_images(
            StreamName="overlap-gap", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=t_ms / 1000, EndTimestamp=t_ms / 1000, SamplingInterval=3000,
            Format="JPEG")["Images"]
        return image

    assert image_at(START_MS + 4000).get("Error") == "NO_MEDIA"
    assert "ImageContent" in image_at(START_MS + 3999)
    assert "ImageContent" in image_at(START_MS + 3000)  # back to back: the later fragment
    # the same instants within one page, whose lookup also finds the fragment [3000, 4000)
    images = archived.get_images(
        StreamName="overlap-gap", ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=(START_MS + 3000) / 1000, EndTimestamp=(START_MS + 4500) / 1000,
        SamplingInterval=500, Format="JPEG")["Images"]
    assert [i.get("Error") for i in images] == [None, None, "NO_MEDIA", "NO_MEDIA"]
