"""Image generation into S3 and notifications to a webhook, end to end: a real server, real
SeaweedFS, a webhook receiver started here, and MKV tagged as the AWS producer SDK tags it
(a Tags element before the fragment's Cluster)."""

from __future__ import annotations

import base64
import json
import re
import signal
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.exceptions import ClientError
from conftest import ServerProcess, refusal
from kvs_media import persisted_numbers, put_mkv, wait_until
from seaweed_server import REGION

from kvslite.server.delivery.deliverer import KEYS
from kvslite.media import mkv, synthetic

pytestmark = pytest.mark.slow  # a server and a receiver per test

START_MS = int(time.time() * 1000) - 600_000
ACCOUNT = "000000000000"
KEY = re.compile(r"^(?P<uri>[^_]*?)(?:(?P<prefix>[^/_]+)_)?" + ACCOUNT +
                 r"_(?P<stream>[\w.-]+)_(?P<ms>\d{13})_(?P<id>[0-9a-f-]{36})\.(?P<ext>jpg|png)$")


class Webhook:
    """An HTTP receiver: records each POST; answers 500 to the first `fail` of them, and
    holds requests until `released` is set again."""

    def __init__(self):
        self.received: list[dict] = []
        self.started = 0  # POSTs begun, held or not
        self.fail = 0
        self.released = threading.Event()  # cleared: requests wait in the handler
        self.released.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.started += 1
                hook.released.wait()
                hook.received.append(json.loads(body))
                status = 500 if hook.fail > 0 else 200
                hook.fail -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/kvs-events"

    def messages(self) -> dict[str, dict]:
        """Delivered notification messages by MessageId (retries repeat an id)."""
        return {m["MessageId"]: json.loads(m["Message"]) for m in self.received}


def tagged_mkv(video, start_ms: int, events: dict[int, list[list[tuple[str, str]]]]) -> bytes:
    """The video as KVS MKV, with the given Tags elements before the clusters they mark."""
    parts = [mkv.write_header(synthetic.stream_header(video))]
    for index, cluster in enumerate(synthetic.clusters(video, start_ms)):
        parts += [mkv.write_tags(tags) for tags in events.get(index, [])]
        parts.append(mkv.write_cluster(cluster)[0])
    return b"".join(parts)


IMAGE = [("AWS_KINESISVIDEO_IMAGE_GENERATION", ""), ("AWS_KINESISVIDEO_IMAGE_PREFIX", "door"),
         ("camera", "front")]
NOTIFY = [("AWS_KINESISVIDEO_NOTIFICATION", ""), ("event", "ring"), ("camera", "front")]


@pytest.fixture(scope="module")
def world(seaweed, tmp_path_factory):
    bucket = "kvs-images"
    s3 = seaweed.client()
    s3.create_bucket(Bucket=bucket)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_DEFAULT_REGION": REGION}
    server = ServerProcess(tmp_path_factory.mktemp("events") / "data",
                           "--s3-endpoint-url", seaweed.endpoint_url,
                           "--min-sampling-interval-ms", "100",
                           "--webhook-allow", "loopback", env=env).start()  # the Webhook's
    webhook = Webhook()
    yield server, s3, bucket, webhook
    server.stop()
    webhook.server.shutdown()


def image_config(bucket: str, prefix: str, **overrides) -> dict:
    config = {"Status": "ENABLED", "ImageSelectorType": "PRODUCER_TIMESTAMP",
              "DestinationConfig": {"Uri": f"s3://{bucket}/{prefix}",
                                    "DestinationRegion": REGION},
              "SamplingInterval": 500, "Format": "JPEG", "FormatConfig": {"JPEGQuality": "70"},
              "WidthPixels": 160, "HeightPixels": 120}
    return {**config, **overrides}


def notify_to(kvs, stream: str, webhook: Webhook) -> None:
    kvs.update_notification_configuration(StreamName=stream, NotificationConfiguration={
        "Status": "ENABLED", "DestinationConfig": {"Uri": webhook.url}})


def objects(s3, bucket: str, prefix: str) -> dict[str, dict]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o for o in listed}


def test_configurations_are_validated_kept_and_deleted(world):
    server, _, bucket, webhook = world
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="cfg", DataRetentionInHours=1)
    kvs.create_stream(StreamName="cfg-noarchive", DataRetentionInHours=0)
    assert "ImageGenerationConfiguration" not in \
        kvs.describe_image_generation_configuration(StreamName="cfg")
    config = image_config(bucket, "cfg")
    kvs.update_image_generation_configuration(StreamName="cfg",
                                              ImageGenerationConfiguration=config)
    notification = {"Status": "DISABLED", "DestinationConfig": {"Uri": webhook.url}}
    kvs.update_notification_configuration(StreamName="cfg",
                                          NotificationConfiguration=notification)
    bad = {
        "region": image_config(bucket, "x", DestinationConfig={
            "Uri": f"s3://{bucket}/x", "DestinationRegion": "eu-west-1"}),
        "interval": image_config(bucket, "x", SamplingInterval=50),
        "uri": image_config(bucket, "x", DestinationConfig={"Uri": "ftp://host/x",
                                                             "DestinationRegion": REGION}),
        "quality": image_config(bucket, "x", FormatConfig={"JPEGQuality": "101"}),
        "png quality": image_config(bucket, "x", Format="PNG",
                                    FormatConfig={"JPEGQuality": "0"}),
    }
    for name, wrong in bad.items():
        assert refusal(lambda: kvs.update_image_generation_configuration(
            StreamName="cfg", ImageGenerationConfiguration=wrong))[0] == \
            "InvalidArgumentException", name
    sns = {"Status": "ENABLED",
           "DestinationConfig": {"Uri": "arn:aws:sns:us-east-1:000000000000:doorbell"}}
    with pytest.raises(ClientError) as e:
        kvs.update_notification_configuration(StreamName="cfg", NotificationConfiguration=sns)
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "webhook" in e.value.response["Error"]["Message"]
    assert refusal(lambda: kvs.update_image_generation_configuration(
        StreamName="cfg-noarchive", ImageGenerationConfiguration=config))[0] == \
        "NoDataRetentionException"
    assert refusal(lambda: kvs.describe_notification_configuration(
        StreamName="nosuch"))[0] == "ResourceNotFoundException"
    # kept across a restart, exactly as given
    server.stop()
    server.start()
    kvs = server.client("kinesisvideo")
    assert kvs.describe_image_generation_configuration(StreamName="cfg")[
        "ImageGenerationConfiguration"] == config
    assert kvs.describe_notification_configuration(StreamName="cfg")[
        "NotificationConfiguration"] == notification
    # null deletes it
    kvs.update_image_generation_configuration(StreamName="cfg")
    assert "ImageGenerationConfiguration" not in \
        kvs.describe_image_generation_configuration(StreamName="cfg")


def test_tagged_fragments_get_the_images_get_images_gives(world, h264):
    server, s3, bucket, _ = world
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="doorbell", DataRetentionInHours=1)
    kvs.update_image_generation_configuration(
        StreamName="doorbell", ImageGenerationConfiguration=image_config(bucket, "thumbs/"))
    # fragments 0 and 2 (1 s each) tagged; 1 and 3 not
    acks = put_mkv(server.port, "doorbell",
                   tagged_mkv(h264, START_MS, {0: [IMAGE], 2: [IMAGE]}))
    numbers = persisted_numbers(acks)
    assert len(numbers) == 4
    stored = wait_until(lambda: len(got := objects(s3, bucket, "thumbs/")) == 4 and got,
                        timeout=30, what="4 images in S3")
    archived = server.client("kinesis-video-archived-media")
    expected = {}
    for first in (START_MS, START_MS + 2000):  # GetImages over each tagged fragment's span
        page = archived.get_images(
            StreamName="doorbell", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=first / 1000, EndTimestamp=(first + 999) / 1000,
            SamplingInterval=500, Format="JPEG", FormatConfig={"JPEGQuality": "70"},
            WidthPixels=160, HeightPixels=120)
        for image in page["Images"]:
            at_ms = round(image["TimeStamp"].timestamp() * 1000)
            expected[at_ms] = base64.b64decode(image["ImageContent"])
    assert sorted(expected) == [START_MS, START_MS + 500, START_MS + 2000, START_MS + 2500]
    for key in stored:
        match = KEY.match(key)
        assert match, key
        assert (match["uri"], match["prefix"], match["stream"], match["ext"]) == \
            ("thumbs/", "door", "doorbell", "jpg")
        obj = s3.get_object(Bucket=bucket, Key=key)
        assert obj["Body"].read() == expected[int(match["ms"])]  # identical bytes
        assert obj["ContentType"] == "image/jpeg"
        fragment = numbers[(int(match["ms"]) - START_MS) // 1000]
        assert obj["Metadata"] == {"camera": "front",
                                   "aws_kinesisvideo_fragment_number": fragment,
                                   "aws_kinesisvideo_producer_timestamp":
                                       str(START_MS + (int(match["ms"]) - START_MS) // 1000 * 1000),
                                   "aws_kinesisvideo_server_timestamp":
                                       obj["Metadata"]["aws_kinesisvideo_server_timestamp"]}
    assert sorted(int(KEY.match(k)["ms"]) for k in stored) == sorted(expected)


def test_disabled_or_untagged_produce_nothing(world, h264):
    server, s3, bucket, _ = world
    kvs = server.client("kinesisvideo")
    for name, status in (("quiet", "DISABLED"), ("after-quiet", "ENABLED")):
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
        kvs.update_image_generation_configuration(
            StreamName=name, ImageGenerationConfiguration=image_config(
                bucket, f"{name}/", Status=status, SamplingInterval=1000))
    put_mkv(server.port, "quiet", tagged_mkv(h264, START_MS, {0: [IMAGE], 1: [IMAGE]}))
    put_mkv(server.port, "after-quiet", tagged_mkv(h264, START_MS, {3: [IMAGE]}))
    # work is done in order: once the later stream's image is there, the earlier had its turn
    image = wait_until(lambda: list(objects(s3, bucket, "after-quiet/")), timeout=30,
                       what="the enabled stream's image")
    assert objects(s3, bucket, "quiet/") == {}
    # the first and only image is the tagged fragment's: the untagged ones made none
    assert [int(KEY.match(key)["ms"]) for key in image] == [START_MS + 3000]
    assert len(objects(s3, bucket, "after-quiet/")) == 1


def test_notifications_are_retried_until_the_webhook_takes_them(world, h264):
    server, _, _, webhook = world
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="ring", DataRetentionInHours=1)
    notify_to(kvs, "ring", webhook)
    webhook.received.clear()
    webhook.fail = 2  # the first two POSTs get a 500
    acks = put_mkv(server.port, "ring", tagged_mkv(h264, START_MS, {1: [NOTIFY], 3: [NOTIFY]}))
    numbers = persisted_numbers(acks)
    wait_until(lambda: len(webhook.messages()) == 2 and len(webhook.received) >= 4, timeout=30,
               what="both notifications, after the failures")
    arn = kvs.describe_stream(StreamName="ring")["StreamInfo"]["StreamARN"]
    messages = sorted(webhook.messages().values(), key=lambda m: m["FragmentNumber"])
    assert [m["FragmentNumber"] for m in messages] == [numbers[1], numbers[3]]
    for message, index in zip(messages, (1, 3)):
        assert message["StreamArn"] == arn
        assert message["NotificationType"] == "PERSISTED"
        assert message["FragmentStartProducerTimestamp"] == START_MS + 1000 * index
        assert isinstance(message["FragmentStartServerTimestamp"], int)
        assert message["NotificationPayload"] == {"event": "ring", "camera": "front"}
    envelope = webhook.received[-1]
    assert (envelope["Type"], envelope["Subject"]) == \
        ("Notification", "Kinesis Video Streams Notification")


def test_a_crash_mid_delivery_loses_nothing_and_duplicates_no_object(world, h264):
    server, s3, bucket, webhook = world
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="crash", DataRetentionInHours=1)
    notify_to(kvs, "crash", webhook)
    kvs.update_image_generation_configuration(StreamName="crash", ImageGenerationConfiguration=
                                              image_config(bucket, "crash/"))
    webhook.received.clear()
    webhook.started = 0
    webhook.released.clear()  # the first notification hangs in the webhook
    try:
        acks = put_mkv(server.port, "crash", tagged_mkv(h264, START_MS, {
            0: [NOTIFY, IMAGE], 1: [IMAGE], 2: [NOTIFY]}))
        numbers = persisted_numbers(acks)
        wait_until(lambda: webhook.started >= 1, timeout=30, what="a delivery under way")
        server.stop(signal.SIGKILL)  # mid-delivery
    finally:
        webhook.released.set()
    server.start()
    # claims lapse and the work is done again: every notification arrives (at least once,
    # a repeat with its MessageId), every image exactly once under its own key
    wait_until(lambda: len(webhook.messages()) == 2, timeout=60, what="both notifications")
    assert sorted(m["FragmentNumber"] for m in webhook.messages().values()) == \
        [numbers[0], numbers[2]]
    # the keys are derived, not random: a repeated delivery overwrites, never adds
    arn = kvs.describe_stream(StreamName="crash")["StreamInfo"]["StreamARN"]
    tagged = ((numbers[0], START_MS), (numbers[1], START_MS + 1000))  # the IMAGE fragments
    expected = {f"crash/door_{ACCOUNT}_crash_{ms}_{uuid.uuid5(KEYS, f'{arn}/{n}/{ms}')}.jpg"
                for n, first in tagged for ms in (first, first + 500)}
    wait_until(lambda: set(objects(s3, bucket, "crash/")) == expected, timeout=60,
               what="the 4 images under their keys")


def test_a_full_outbox_drops_new_events_visibly(world, h264, tmp_path):
    _, _, _, webhook = world
    server = ServerProcess(tmp_path / "data", "--delivery-queue-limit", "1",
                           "--webhook-allow", "loopback").start()
    try:
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="busy", DataRetentionInHours=1)
        notify_to(kvs, "busy", webhook)
        webhook.received.clear()
        webhook.released.clear()  # the first delivery stays in the outbox meanwhile
        try:
            acks = put_mkv(server.port, "busy", tagged_mkv(h264, START_MS, {
                0: [NOTIFY], 1: [NOTIFY], 2: [NOTIFY]}))
            assert len(persisted_numbers(acks)) == 4  # the acks never wait on deliveries
        finally:
            webhook.released.set()
        wait_until(lambda: len(webhook.messages()) == 1, timeout=30, what="one notification")
        with urllib.request.urlopen(f"{server.endpoint}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'kvslite_deliveries_total{kind="any",result="dropped"} 2.0' in text
        assert 'kvslite_deliveries_total{kind="notification",result="delivered"} 1.0' in text
    finally:
        server.stop()


def test_event_tags_are_read_within_aws_limits():
    from kvslite.server.archive.fragment_events import events_in

    pairs = [(f"k{i}", f"v{i}") for i in range(12)]
    found = events_in([("AWS_KINESISVIDEO_IMAGE_GENERATION", ""),
                       ("AWS_KINESISVIDEO_IMAGE_PREFIX", "p" * 257), ("AWS_OTHER", "x"),
                       ("n" * 129, "too long a name"), ("long", "v" * 257), *pairs])
    assert found == {"image-generation": {"prefix": "", "metadata": dict(pairs[:10])}}
    assert events_in([("AWS_KINESISVIDEO_NOTIFICATION", ""), ("a", "b")]) == \
        {"notification": {"metadata": {"a": "b"}}}
    assert events_in([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]) == {}


def test_s3_metadata_keeps_what_s3_takes():
    from kvslite.server.delivery.deliverer import s3_metadata

    aws = {"aws_kinesisvideo_fragment_number": "9" * 47}
    custom = {"camera": "front", "ort": "Zürich", "bad name": "x", "big": "v" * 256,
              **{f"k{i}": "v" * 256 for i in range(8)}}
    metadata = s3_metadata(custom, aws)
    assert metadata["camera"] == "front" and metadata["big"] == "v" * 256
    assert "ort" not in metadata and "bad name" not in metadata  # not header-safe ASCII
    assert sum(len(k) + len(v) for k, v in metadata.items()) <= 2048
    assert aws.items() <= metadata.items()
