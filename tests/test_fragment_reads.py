"""ListFragments and GetMediaForFragmentList through boto3 on a real archive."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from kvs_media import demux_packets, mkv_events, put_mkv
from kvslite.media import mkv, synthetic

START_MS = int(time.time() * 1000) - 3_600_000


@pytest.fixture(scope="module")
def video():
    return synthetic.encode_video("h264", seconds=6, gop=12, bframes=2)  # 13 fragments


@pytest.fixture(scope="module")
def archive(shared_server, kvs, video):
    """One stream holding the video twice, 100 s apart, so there is a gap."""
    kvs.create_stream(StreamName="reads", DataRetentionInHours=24)
    first = put_mkv(shared_server.port, "reads", synthetic.to_mkv(video, START_MS))
    second = put_mkv(shared_server.port, "reads", synthetic.to_mkv(video, START_MS + 100_000))
    numbers = [a["FragmentNumber"] for a in first + second if a["EventType"] == "PERSISTED"]
    clusters = synthetic.clusters(video, START_MS) + synthetic.clusters(video, START_MS + 100_000)
    assert len(numbers) == len(clusters) == 26
    return dict(zip(numbers, clusters))


@pytest.fixture(scope="module")
def archived(shared_server):
    return shared_server.client("kinesis-video-archived-media")


def producer_range(start_ms, end_ms):
    return {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}}


@pytest.mark.slow
def test_list_everything(archived, archive):
    fragments = archived.list_fragments(StreamName="reads", MaxResults=1000)["Fragments"]
    assert [f["FragmentNumber"] for f in fragments] == list(archive)
    for fragment in fragments:
        cluster = archive[fragment["FragmentNumber"]]
        assert round(fragment["ProducerTimestamp"].timestamp() * 1000) == cluster.timecode
        assert fragment["FragmentSizeInBytes"] == len(mkv.write_cluster(cluster)[0])
    # 12 frames of 40 ms per GOP; the last GOP of each copy has 6 frames
    lengths = [f["FragmentLengthInMilliseconds"] for f in fragments]
    assert lengths == ([480] * 12 + [240]) * 2


def test_producer_timestamp_range_is_inclusive_on_fragment_starts(archived, archive):
    starts = [c.timecode for c in archive.values()]
    selector = producer_range(starts[2], starts[5])
    fragments = archived.list_fragments(StreamName="reads", FragmentSelector=selector)["Fragments"]
    assert [round(f["ProducerTimestamp"].timestamp() * 1000) for f in fragments] == starts[2:6]
    # a range inside the gap between the copies matches nothing
    gap = producer_range(START_MS + 10_000, START_MS + 90_000)
    assert archived.list_fragments(StreamName="reads", FragmentSelector=gap)["Fragments"] == []


def test_server_timestamp_range(archived, archive):
    everything = archived.list_fragments(StreamName="reads")["Fragments"]
    server_times = sorted(f["ServerTimestamp"].timestamp() for f in everything)
    selector = {"FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": server_times[0] - 1,
                                   "EndTimestamp": server_times[-1] + 1}}
    assert len(archived.list_fragments(StreamName="reads",
                                       FragmentSelector=selector)["Fragments"]) == 26
    future = {"FragmentSelectorType": "SERVER_TIMESTAMP",
              "TimestampRange": {"StartTimestamp": time.time() + 60,
                                 "EndTimestamp": time.time() + 120}}
    assert archived.list_fragments(StreamName="reads", FragmentSelector=future)["Fragments"] == []


def test_pages_join_to_the_whole(archived, archive):
    selector = producer_range(START_MS, START_MS + 200_000)
    pages = archived.get_paginator("list_fragments").paginate(
        StreamName="reads", FragmentSelector=selector, PaginationConfig={"PageSize": 5})
    numbers = [f["FragmentNumber"] for page in pages for f in page["Fragments"]]
    assert numbers == list(archive)


def test_list_fragments_errors(shared_server, archived, kvs):
    def code(**kwargs):
        with pytest.raises(ClientError) as e:
            client.list_fragments(**kwargs)
        return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"][
            "HTTPStatusCode"]

    client = shared_server.client("kinesis-video-archived-media", validate=False)
    backwards = producer_range(START_MS + 10, START_MS)
    assert code(StreamName="reads", FragmentSelector=backwards) == \
        ("InvalidArgumentException", 400)
    assert code(StreamName="reads", NextToken="bm90IGEgdG9rZW4=") == \
        ("InvalidArgumentException", 400)
    assert code(StreamName="reads", MaxResults=1001) == ("InvalidArgumentException", 400)
    assert code(StreamName="no-such-reads") == ("ResourceNotFoundException", 404)
    selector = {"FragmentSelectorType": "ARRIVAL_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 1, "EndTimestamp": 2}}
    assert code(StreamName="reads", FragmentSelector=selector) == \
        ("InvalidArgumentException", 400)


def test_media_for_fragment_list_is_byte_exact_in_request_order(archived, archive, video):
    numbers = list(archive)
    wanted = [numbers[3], numbers[0], numbers[20]]
    media = archived.get_media_for_fragment_list(StreamName="reads", Fragments=wanted)
    assert media["ContentType"] == "video/webm"
    data = media["Payload"].read()
    expected = [(f.timecode, f.keyframe, f.payload) for n in wanted for f in archive[n].frames]
    assert demux_packets(data) == expected


def test_media_for_fragment_list_carries_fragment_tags(archived, archive):
    numbers = list(archive)[:2]
    data = archived.get_media_for_fragment_list(StreamName="reads",
                                                Fragments=numbers)["Payload"].read()
    tags = [dict(e.tags) for e in mkv_events(data) if isinstance(e, mkv.Tags)]
    assert [t["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for t in tags] == numbers
    for tag, number in zip(tags, numbers):
        producer_ms = archive[number].timecode
        assert tag["AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"] == \
            f"{producer_ms // 1000}.{producer_ms % 1000:03d}"
        assert abs(float(tag["AWS_KINESISVIDEO_SERVER_TIMESTAMP"]) - time.time()) < 60


def test_media_for_unknown_fragment_numbers(archived, archive):
    with pytest.raises(ClientError) as e:
        archived.get_media_for_fragment_list(StreamName="reads",
                                             Fragments=[list(archive)[0], "12345"])
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "12345" in e.value.response["Error"]["Message"]
