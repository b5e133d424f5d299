"""Where generated images may go: never into kvslite's own media location (the orphan
collector would delete them, and they could land in a stream's folder), and never outside the
configured prefix, whatever AWS_KINESISVIDEO_IMAGE_PREFIX a producer sends. A real server on
SeaweedFS, boto3 and tagged MKV over PutMedia."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError
from conftest import ServerProcess
from kvs_media import put_mkv, wait_until
from seaweed_server import REGION
from test_event_delivery import START_MS, image_config, tagged_mkv

from kvslite.server.archive.fragment_events import events_in
from kvslite.media.limits import clean_image_prefix

pytestmark = pytest.mark.slow  # a server on SeaweedFS per test


@pytest.fixture(scope="module")
def on_s3(seaweed, tmp_path_factory):
    """A server whose media is s3://<media bucket>/media, and a second bucket for images."""
    media, images = (f"kvs-{name}-{uuid.uuid4().hex[:8]}" for name in ("media", "images"))
    s3 = seaweed.client()
    for bucket in (media, images):
        s3.create_bucket(Bucket=bucket)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_DEFAULT_REGION": REGION}
    server = ServerProcess(tmp_path_factory.mktemp("images") / "data",
                           "--media-url", f"s3://{media}/media",
                           "--s3-endpoint-url", seaweed.endpoint_url,
                           "--min-sampling-interval-ms", "100", env=env).start()
    yield server, s3, media, images
    server.stop()


def test_destinations_overlapping_the_media_location_are_refused(on_s3):
    server, _, media, images = on_s3
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="overlap", DataRetentionInHours=1)
    for uri in (f"s3://{media}/media/thumbs", f"s3://{media}/media", f"s3://{media}",
                f"s3://{media}/media/"):
        config = image_config(media, "", DestinationConfig={"Uri": uri,
                                                            "DestinationRegion": REGION})
        with pytest.raises(ClientError) as e:
            kvs.update_image_generation_configuration(StreamName="overlap",
                                                      ImageGenerationConfiguration=config)
        assert e.value.response["Error"]["Code"] == "InvalidArgumentException", uri
        assert e.value.response["Error"]["Message"] == \
            f"DestinationConfig.Uri {uri!r} overlaps kvslite's own media location " \
            f"(--media-url s3://{media}/media/): give images a bucket or prefix apart"
    for uri in (f"s3://{media}/thumbs", f"s3://{media}/med", f"s3://{images}/media"):
        config = image_config(media, "", DestinationConfig={"Uri": uri,
                                                            "DestinationRegion": REGION})
        kvs.update_image_generation_configuration(StreamName="overlap",
                                                  ImageGenerationConfiguration=config)


def test_an_image_prefix_cannot_leave_the_configured_prefix(on_s3, h264):
    server, s3, _, images = on_s3
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="escape", DataRetentionInHours=1)
    kvs.update_image_generation_configuration(
        StreamName="escape",
        ImageGenerationConfiguration=image_config(images, "thumbs", SamplingInterval=1000))
    prefixes = ["../escape", "streams/other/x", "/door/", "ok"]  # one per 1-s fragment
    tags = {i: [[("AWS_KINESISVIDEO_IMAGE_GENERATION", ""),
                 ("AWS_KINESISVIDEO_IMAGE_PREFIX", prefix)]] for i, prefix in enumerate(prefixes)}
    put_mkv(server.port, "escape", tagged_mkv(h264, START_MS, tags))

    def keys():
        listed = s3.list_objects_v2(Bucket=images).get("Contents", [])
        return sorted(o["Key"] for o in listed)

    stored = wait_until(lambda: len(got := keys()) == 4 and got, timeout=30,
                        what="an image per fragment")
    names = {int(key.split("_")[-2]): key for key in stored}  # by ImageTimecode
    account_and_stream = "000000000000_escape_"
    assert [names[START_MS + 1000 * i].split(account_and_stream)[0] for i in range(4)] == \
        ["thumbs/", "thumbs/", "thumbs/door_", "thumbs/ok_"]  # the bad ones are left out
    assert all(key.count("/") == 1 for key in stored)
    assert "image prefix '../escape' is ignored" in server.output()


def test_image_prefixes_are_cleaned_or_refused():
    assert clean_image_prefix("door") == "door"
    assert clean_image_prefix(" /door/ ") == "door"
    assert clean_image_prefix("Tür-3_(a).b*'!") == "Tür-3_(a).b*'!"
    assert clean_image_prefix("é" * 128) == "é" * 128  # 256 bytes of UTF-8
    for bad in ("../x", "a/b", "a..b", "..", "a b", "tab\there", "nul\x00", "new\nline",
                "semi;colon", "é" * 129):
        with pytest.raises(ValueError):
            clean_image_prefix(bad)
    tags = [("AWS_KINESISVIDEO_IMAGE_GENERATION", ""), ("AWS_KINESISVIDEO_IMAGE_PREFIX", "a/b")]
    assert events_in(tags) == {"image-generation": {"prefix": "", "metadata": {}}}
