"""GetImages end to end: frame-accurate images from a real archive, through boto3."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from conftest import refusal
from kvs_media import persisted_numbers, psnr, put_mkv
from kvslite.media import synthetic

START_MS = (int(time.time()) - 7200) * 1000
GAP_START_MS = START_MS + 100_000  # a second copy, with a gap before it


def pixels(image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image["ImageContent"])))
                      .convert("RGB"))


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers("--min-sampling-interval-ms", "1")


@pytest.fixture(scope="module")
def h265():
    return synthetic.encode_video("h265", seconds=2, gop=20, bframes=2)


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


@pytest.fixture(scope="module")
def streams(server, h264, h265):
    kvs = server.client("kinesisvideo")
    for name in ("img-h264", "img-h265", "img-corrupt"):
        kvs.create_stream(StreamName=name, DataRetentionInHours=24)
    put_mkv(server.port, "img-h264", synthetic.to_mkv(h264, START_MS))
    put_mkv(server.port, "img-h264", synthetic.to_mkv(h264, GAP_START_MS))
    put_mkv(server.port, "img-h265", synthetic.to_mkv(h265, START_MS))
    put_mkv(server.port, "img-corrupt", synthetic.to_mkv(h264, START_MS))
    kvs.create_stream(StreamName="img-noretention", DataRetentionInHours=0)


def get_images(archived, stream, start_ms, end_ms, interval, **kwargs):
    """All pages of one request, joined."""
    kwargs.setdefault("Format", "JPEG")
    kwargs.setdefault("ImageSelectorType", "PRODUCER_TIMESTAMP")
    pages = archived.get_paginator("get_images").paginate(
        StreamName=stream, StartTimestamp=start_ms / 1000, EndTimestamp=end_ms / 1000,
        SamplingInterval=interval, **kwargs)
    return [image for page in pages for image in page["Images"]]


def assert_shows(image: dict, video, t_offset_ms: int, min_psnr=30.0):
    """The image is the frame on screen at t (last pts <= t), not one of its neighbours."""
    reference = video.frames_rgb()
    shown = max(i for i, (pts, _) in enumerate(reference) if pts <= t_offset_ms)
    got = pixels(image)
    own = psnr(got, reference[shown][1])
    assert own >= min_psnr, (t_offset_ms, own)
    for neighbour in (shown - 1, shown + 1):
        if 0 <= neighbour < len(reference):
            assert psnr(got, reference[neighbour][1]) < own, (t_offset_ms, neighbour)


@pytest.mark.slow
def test_every_sample_is_the_frame_on_screen(archived, streams, h264):
    """13 ms steps hit every frame at many phases: first frame of a GOP, mid-GOP B-frames,
    the last frame before the next keyframe."""
    images = get_images(archived, "img-h264", START_MS, START_MS + 3999, 13)
    assert len(images) == 308  # t_k = start + 13k <= end, four pages
    assert [round(i["TimeStamp"].timestamp() * 1000) for i in images] == \
        [START_MS + 13 * k for k in range(308)]
    for k, image in enumerate(images):
        assert "Error" not in image, (k, image)
        assert_shows(image, h264, 13 * k)


def test_gop_boundaries_exactly(archived, streams, h264):
    last_before_key = h264.pts_ms(24)  # the frame shown just before the 2nd keyframe
    for t in (0, last_before_key, last_before_key + 39, 1000, 1000 + 1):
        [image] = get_images(archived, "img-h264", START_MS + t, START_MS + t, 3000)
        assert_shows(image, h264, t)


def test_h265(archived, streams, h265):
    images = get_images(archived, "img-h265", START_MS, START_MS + 1999, 37)
    assert len(images) == 55
    for k, image in enumerate(images):
        assert_shows(image, h265, 37 * k)


def test_no_media_before_between_and_after(archived, streams, h264):
    images = get_images(archived, "img-h264", START_MS - 2000, GAP_START_MS + 6000, 1000)
    errors = [i.get("Error") for i in images]
    assert len(images) == 109
    assert errors[:2] == ["NO_MEDIA", "NO_MEDIA"]           # before the archive
    assert errors[2:6] == [None] * 4                        # first copy, 4 s
    assert set(errors[6:102]) == {"NO_MEDIA"}               # the gap
    assert errors[102:106] == [None] * 4                    # second copy
    assert set(errors[106:]) == {"NO_MEDIA"}                # after the last fragment
    assert all("ImageContent" not in i for i in images if i.get("Error"))


def test_range_shorter_than_interval_gives_the_start(archived, streams, h264):
    images = get_images(archived, "img-h264", START_MS + 500, START_MS + 900, 3000)
    assert len(images) == 1
    assert round(images[0]["TimeStamp"].timestamp() * 1000) == START_MS + 500
    assert_shows(images[0], h264, 500)


@pytest.mark.slow
def test_server_timestamp_selector(server, archived, h264):
    """Sampled on kvslite's arrival clock: a fragment's frames keep their offsets."""
    from kvs_media import PutMediaConnection
    from kvslite.media import mkv

    server.client("kinesisvideo").create_stream(StreamName="img-server", DataRetentionInHours=1)
    conn = PutMediaConnection(server.port, "img-server")
    conn.send(mkv.write_header(synthetic.stream_header(h264)))
    end_of_fragment = mkv.write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])
    for cluster in synthetic.clusters(h264, START_MS)[:3]:
        conn.send(mkv.write_cluster(cluster)[0] + end_of_fragment)
        # its server timestamp (arrival of its first byte) is fixed once it is acked
        acks = conn.wait_for("PERSISTED")
        assert acks[-1]["EventType"] == "PERSISTED", acks
        # one fragment a second, like a camera. Counted from the ack, the next fragment
        # arrives at least 1 s after this one on the server's clock; counted from the
        # send alone, it might not, if the server read this one late
        time.sleep(1.0)
    conn.finish()
    conn.all_acks()
    conn.close()
    for fragment in archived.list_fragments(StreamName="img-server")["Fragments"]:
        server_ms = round(fragment["ServerTimestamp"].timestamp() * 1000)
        producer_offset = round(fragment["ProducerTimestamp"].timestamp() * 1000) - START_MS
        for offset in (0, 41, 500, 950):  # leave room for a few ms of arrival jitter
            [image] = get_images(archived, "img-server", server_ms + offset, server_ms + offset,
                                 3000, ImageSelectorType="SERVER_TIMESTAMP")
            assert_shows(image, h264, producer_offset + offset)


def test_corrupted_fragment_is_media_error_for_its_samples_only(server, archived, streams,
                                                                h264):
    blobs = sorted(Path(server.data_dir, "media").glob("streams/*-img-corrupt/*.mkv"))
    assert len(blobs) == 4
    second = blobs[1]  # named by producer timestamp: the fragment [1000, 2000)
    second.write_bytes(bytes(len(second.read_bytes())))
    images = get_images(archived, "img-corrupt", START_MS, START_MS + 3999, 250)
    errors = [i.get("Error") for i in images]
    assert errors == [None] * 4 + ["MEDIA_ERROR"] * 4 + [None] * 8
    for k in (0, 3, 8, 15):
        assert_shows(images[k], h264, 250 * k)


def test_png_is_lossless_and_sizes_follow_the_rules(archived, streams, h264):
    [png] = get_images(archived, "img-h264", START_MS + 520, START_MS + 520, 3000, Format="PNG")
    assert base64.b64decode(png["ImageContent"]).startswith(b"\x89PNG")
    assert_shows(png, h264, 520, min_psnr=45)

    def size(**kwargs):
        [image] = get_images(archived, "img-h264", START_MS, START_MS, 3000, **kwargs)
        return Image.open(io.BytesIO(base64.b64decode(image["ImageContent"]))).size

    assert size() == (320, 240)
    assert size(WidthPixels=100, HeightPixels=300) == (100, 300)  # stretched
    assert size(WidthPixels=160) == (160, 120)                    # aspect kept
    assert size(HeightPixels=60) == (80, 60)


def test_jpeg_quality_changes_the_bytes(archived, streams):
    def jpeg_size(quality):
        [image] = get_images(archived, "img-h264", START_MS + 40, START_MS + 40, 3000,
                             FormatConfig={"JPEGQuality": quality})
        return len(base64.b64decode(image["ImageContent"]))

    assert jpeg_size("10") < jpeg_size("80") < jpeg_size("100")


def test_png_with_jpeg_quality_is_treated_alike_by_getimages_and_image_generation(
        server, archived, streams, h264):
    """AWS documents one FormatConfig for GetImages and ImageGenerationConfiguration:
    JPEGQuality 1-100, nothing against PNG. Both accept a valid one with PNG (lossless: it
    has no effect) and both refuse one out of range."""
    [png] = get_images(archived, "img-h264", START_MS + 520, START_MS + 520, 3000,
                       Format="PNG", FormatConfig={"JPEGQuality": "10"})
    assert base64.b64decode(png["ImageContent"]).startswith(b"\x89PNG")
    assert_shows(png, h264, 520, min_psnr=45)  # lossless all the same

    kvs = server.client("kinesisvideo", validate=False)
    config = {"Status": "ENABLED", "ImageSelectorType": "PRODUCER_TIMESTAMP",
              "DestinationConfig": {"Uri": "s3://images/png", "DestinationRegion": "us-east-1"},
              "SamplingInterval": 3000, "Format": "PNG", "FormatConfig": {"JPEGQuality": "10"}}
    kvs.update_image_generation_configuration(StreamName="img-h264",
                                              ImageGenerationConfiguration=config)
    assert kvs.describe_image_generation_configuration(StreamName="img-h264")[
        "ImageGenerationConfiguration"] == config
    kvs.update_image_generation_configuration(StreamName="img-h264")  # deleted again

    out_of_range = {"JPEGQuality": "101"}
    assert error_code(server.client("kinesis-video-archived-media", validate=False),
                      Format="PNG", FormatConfig=out_of_range) == \
        ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as e:
        kvs.update_image_generation_configuration(
            StreamName="img-h264",
            ImageGenerationConfiguration={**config, "FormatConfig": out_of_range})
    assert (e.value.response["Error"]["Code"],
            e.value.response["ResponseMetadata"]["HTTPStatusCode"]) == \
        ("InvalidArgumentException", 400)


def test_pages_join_to_one_big_page(archived, streams):
    def request(max_results, token=None):
        kwargs = {"NextToken": token} if token else {}
        return archived.get_images(
            StreamName="img-h264", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=START_MS / 1000, EndTimestamp=(START_MS + 3000) / 1000,
            SamplingInterval=50, Format="JPEG", MaxResults=max_results, **kwargs)

    whole = request(100)
    assert "NextToken" not in whole and len(whole["Images"]) == 61
    joined, token, pages = [], None, 0
    while True:
        page = request(7, token)
        pages += 1
        assert len(page["Images"]) <= 7
        joined += page["Images"]
        token = page.get("NextToken")
        if not token:
            break
    assert pages == 9
    assert joined == whole["Images"]


def test_default_max_results_is_100(archived, streams):
    page = archived.get_images(StreamName="img-h264", ImageSelectorType="PRODUCER_TIMESTAMP",
                               StartTimestamp=START_MS / 1000,
                               EndTimestamp=(START_MS + 3999) / 1000,
                               SamplingInterval=10, Format="JPEG")
    assert len(page["Images"]) == 100 and page["NextToken"]


# -- errors ------------------------------------------------------------------------------

def error_code(client, **overrides):
    params = dict(StreamName="img-h264", ImageSelectorType="PRODUCER_TIMESTAMP",
                  StartTimestamp=START_MS / 1000, EndTimestamp=(START_MS + 1000) / 1000,
                  SamplingInterval=100, Format="JPEG")
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return refusal(client.get_images, **params)[:2]


@pytest.mark.parametrize("overrides", [
    {"StartTimestamp": (START_MS + 2000) / 1000},                # start after end
    {"FormatConfig": {"JPEGQuality": "0"}},
    {"FormatConfig": {"JPEGQuality": "101"}},
    {"FormatConfig": {"JPEGQuality": "high"}},
    {"FormatConfig": {"Quality": "50"}},
    {"FormatConfig": {}},
    {"WidthPixels": 3841},
    {"HeightPixels": 2161},
    {"WidthPixels": 0},
    {"MaxResults": 101},
    {"MaxResults": 0},
    {"Format": "GIF"},
    {"ImageSelectorType": "ARRIVAL_TIMESTAMP"},
    {"NextToken": "AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAA"},        # forged
    {"NextToken": "not a token!"},
    {"Format": None},                                           # required
    {"StartTimestamp": None},
])
def test_invalid_arguments(server, streams, overrides):
    client = server.client("kinesis-video-archived-media", validate=False)
    assert error_code(client, **overrides) == ("InvalidArgumentException", 400)


def test_next_token_is_bound_to_its_request(archived, streams):
    page = archived.get_images(StreamName="img-h264", ImageSelectorType="PRODUCER_TIMESTAMP",
                               StartTimestamp=START_MS / 1000,
                               EndTimestamp=(START_MS + 2000) / 1000, SamplingInterval=100,
                               Format="JPEG", MaxResults=5)
    assert error_code(archived, NextToken=page["NextToken"], Format="PNG") == \
        ("InvalidArgumentException", 400)
    assert error_code(archived, NextToken=page["NextToken"], SamplingInterval=101) == \
        ("InvalidArgumentException", 400)


def test_stream_errors(archived, streams):
    assert error_code(archived, StreamName="img-noretention") == \
        ("NoDataRetentionException", 400)
    assert error_code(archived, StreamName="img-nope") == ("ResourceNotFoundException", 404)
    assert error_code(archived, StreamName=None) == ("InvalidArgumentException", 400)


def test_sampling_interval_minimum_is_a_server_setting(shared_server, kvs, h264):
    """The default server keeps AWS's 3000 ms minimum; omitted means the minimum."""
    kvs.create_stream(StreamName="img-minimum", DataRetentionInHours=1)
    put_mkv(shared_server.port, "img-minimum", synthetic.to_mkv(h264, START_MS))
    client = shared_server.client("kinesis-video-archived-media")
    with pytest.raises(ClientError) as e:
        client.get_images(StreamName="img-minimum", ImageSelectorType="PRODUCER_TIMESTAMP",
                          StartTimestamp=START_MS / 1000, EndTimestamp=START_MS / 1000 + 10,
                          SamplingInterval=2999, Format="JPEG")
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    page = client.get_images(StreamName="img-minimum", ImageSelectorType="PRODUCER_TIMESTAMP",
                             StartTimestamp=START_MS / 1000, EndTimestamp=START_MS / 1000 + 10,
                             Format="JPEG")
    assert [round(i["TimeStamp"].timestamp() * 1000) - START_MS for i in page["Images"]] == \
        [0, 3000, 6000, 9000]
    assert [i.get("Error") for i in page["Images"]] == [None, None, "NO_MEDIA", "NO_MEDIA"]


@pytest.mark.slow
def test_overload_is_shed_not_fatal(module_servers, h264):
    server = module_servers("--min-sampling-interval-ms", "1",
                                 "--max-image-requests", "1")
    server.client("kinesisvideo").create_stream(StreamName="busy", DataRetentionInHours=1)
    put_mkv(server.port, "busy", synthetic.to_mkv(h264, START_MS))
    outcomes = []

    def call():
        client = server.client("kinesis-video-archived-media")
        try:
            page = client.get_images(StreamName="busy", ImageSelectorType="PRODUCER_TIMESTAMP",
                                     StartTimestamp=START_MS / 1000,
                                     EndTimestamp=(START_MS + 3999) / 1000,
                                     SamplingInterval=40, Format="PNG")
            outcomes.append(len(page["Images"]))
        except ClientError as e:
            outcomes.append(e.response["Error"]["Code"])

    # One call holds the only slot while it renders 100 PNGs; a call made meanwhile is
    # shed at once. The held call is observable only as "no response yet", so keep
    # calling while it is in flight until one call is refused (instead of starting a
    # few threads and hoping two of them overlap).
    for _ in range(5):
        holder = threading.Thread(target=call)
        holder.start()
        while holder.is_alive() and "ClientLimitExceededException" not in outcomes:
            call()
        holder.join()
        if "ClientLimitExceededException" in outcomes:
            break
    call()  # nothing in flight any more: served again
    assert outcomes[-1] == 100
    assert "ClientLimitExceededException" in outcomes
    assert set(outcomes) <= {100, "ClientLimitExceededException"}
    assert 100 in outcomes


# -- a page stays within a 16 MiB image budget ----------------------------------------------

MiB = 1 << 20


def noise_video(frames: int) -> synthetic.EncodedVideo:
    """Every frame a keyframe of random noise (so one fragment per frame), 320x240 @ 25."""
    rng = np.random.default_rng(20240607)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=25, options={
            "preset": "ultrafast", "crf": "18",
            "x264-params": "keyint=1:min-keyint=1:scenecut=0:bframes=0"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            picture = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(io.BytesIO(buf.getvalue())) as inp:
        video = inp.streams.video[0]
        codec_private = bytes(video.codec_context.extradata)
        packets = [(round(p.pts * video.time_base * 1000), p.is_keyframe, bytes(p))
                   for p in inp.demux(video) if p.size]
    assert all(key for _, key, _ in packets)
    return synthetic.EncodedVideo(codec="h264", codec_id="V_MPEG4/ISO/AVC",
                                  codec_private=codec_private, width=320, height=240, fps=25,
                                  gop=1, start_index=0, packets=packets)


@pytest.mark.slow
def test_get_images_pages_stay_within_16_mib_and_paging_delivers_every_sample_once(
        server, archived):
    # 4K PNGs of noise are ~10 MiB each. The server decodes and encodes fragments in waves
    # of twice its cores, checking the budget after each wave: ask for one wave and two
    # more, so even the first wave alone is over 16 MiB and the page must stop early.
    count = 2 * (os.cpu_count() or 2) + 2
    video = noise_video(count)
    server.client("kinesisvideo").create_stream(StreamName="img-budget",
                                                DataRetentionInHours=1)
    acks = put_mkv(server.port, "img-budget", synthetic.to_mkv(video, START_MS))
    assert len(persisted_numbers(acks)) == count
    params = {"StreamName": "img-budget", "ImageSelectorType": "PRODUCER_TIMESTAMP",
              "StartTimestamp": START_MS / 1000,
              "EndTimestamp": (START_MS + 40 * (count - 1)) / 1000,
              "SamplingInterval": 40, "Format": "PNG", "WidthPixels": 3840,
              "HeightPixels": 2160, "MaxResults": count}
    pages = [archived.get_images(**params)]
    while "NextToken" in pages[-1] and len(pages) <= count:
        pages.append(archived.get_images(**params, NextToken=pages[-1]["NextToken"]))

    first = pages[0]["Images"]
    assert 0 < len(first) < count and "NextToken" in pages[0]
    images = [image for page in pages for image in page["Images"]]
    assert [round(i["TimeStamp"].timestamp() * 1000) for i in images] == \
        [START_MS + 40 * k for k in range(count)]  # every sample once, in order
    contents = [base64.b64decode(i["ImageContent"]) for i in images if "Error" not in i]
    assert len(contents) == count
    assert all(c.startswith(b"\x89PNG") for c in contents)
    assert len({hashlib.sha256(c).digest() for c in contents}) == count  # all different
    assert sum(map(len, contents)) > 16 * MiB
    assert Image.open(io.BytesIO(contents[0])).size == (3840, 2160)
