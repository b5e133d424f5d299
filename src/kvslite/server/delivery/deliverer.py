"""The delivery worker: does the outbox's work, on every node, after the PERSISTED ack.

Image generation renders a tagged fragment's images exactly as GetImages would for the
fragment's span (the same ImageSampler, the configuration's SamplingInterval, Format,
FormatConfig and size) and writes each to the configured S3 bucket under AWS's key layout:

    <uri prefix>/<ImagePrefix>_<AccountID>_<StreamName>_<ImageTimecode>_<RandomID>.jpg|png

(no ImagePrefix and its underscore when the producer gave none; ImageTimecode is the sample
time in epoch ms). RandomID is a UUID derived from the stream, fragment and time, so a
delivery retried after a crash overwrites its own objects instead of adding copies. Each
object carries AWS's metadata (fragment number, producer and server timestamps) and the
producer's custom pairs.

A notification is a POST of a signed SNS Notification (sns.py) to the configured http(s)
webhook, at least once: a retry repeats the same MessageId, which consumers can deduplicate
on, with a new Timestamp and Signature.

Work is claimed for CLAIM_MS (a node that dies mid-delivery loses its claim, and another
node or its restart does the work) and scheduled fairly across streams, retried with backoff
on failure and given up after a few attempts (see scheduler.py); it is dropped at once
when nothing is left to do (the stream or fragment is gone, or the configuration is off) or
S3 refuses it for good (no such bucket, access denied).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timezone

from kvslite.server.archive import fragment_events as events
from kvslite.server.delivery.failures import DeliveryError
from kvslite.server.delivery.scheduler import DEFAULT_MAX_ATTEMPTS, DeliveryScheduler
from kvslite.server.archive.fragment_events import IMAGE_GENERATION, EventConfigs
from kvslite.server.archive.fragments import Archive
from kvslite.server.archive.sampling import ImageRequest, ImageSampler, jpeg_quality
from kvslite.server.delivery.sns import SnsSigner, subscription_arn, topic_arn
from kvslite.server.delivery.webhooks import post_json
from kvslite.server.store.metadata import ACTIVE, Clock, Delivery, Fragment, MetadataStore, Stream
from kvslite.server.store.s3 import make_client, parse_s3_url, permanent_failure

log = logging.getLogger("kvslite.delivery")

WEBHOOK_DEADLINE_S = 5.0  # a whole POST: connect, send, answer; well inside CLAIM_MS
RENDERS = 2  # image deliveries rendering at once: GetImages clients keep the other slots
KEYS = uuid.UUID("6b767369-6d61-6765-7300-000000000000")  # namespace of RandomIDs
EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}
SUBJECT = "Kinesis Video Streams Notification"
S3_METADATA_BYTES = 2048  # S3's limit on user metadata, names and values together


class Deliverer(DeliveryScheduler):
    def __init__(self, store: MetadataStore, archive: Archive, sampler: ImageSampler,
                 configs: EventConfigs, *, account_id: str, signer: SnsSigner,
                 s3_endpoint_url: str | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS, interval_s: float = 1.0):
        super().__init__(store, max_attempts=max_attempts, interval_s=interval_s)
        self.archive, self.sampler, self.configs = archive, sampler, configs
        self.account_id = account_id
        self.signer = signer
        self.s3_endpoint_url = s3_endpoint_url
        self._s3 = None  # made on first image delivery: standard AWS configuration
        self._renders = threading.BoundedSemaphore(RENDERS)

    # -- one delivery ---------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> str:
        """Do it; "delivered", or "dropped" when there is nothing left to do."""
        stream = self.store.get_stream(arn=delivery.arn)
        fragment = self.archive.by_number(delivery.arn, delivery.fragment_number) \
            if stream is not None and stream.status == ACTIVE else None
        config = self.configs.enabled(delivery.arn, delivery.kind)
        if stream is None or fragment is None or config is None:
            return "dropped"
        event = json.loads(delivery.event)
        if delivery.kind == IMAGE_GENERATION:
            self._put_images(stream, fragment, config, event)
        else:
            self._post_notification(stream, fragment, config, event)
        return "delivered"

    def _put_images(self, stream: Stream, fragment: Fragment, config: dict,
                    event: dict) -> None:
        clock = Clock(config["ImageSelectorType"])
        start = fragment.producer_ms if clock is Clock.PRODUCER else fragment.server_ms
        request = ImageRequest(
            stream_arn=stream.arn, clock=clock, start_ms=start,
            end_ms=start + max(fragment.duration_ms, 1) - 1,
            interval_ms=config["SamplingInterval"], image_format=config["Format"],
            quality=jpeg_quality(config.get("FormatConfig")),
            width=config.get("WidthPixels"), height=config.get("HeightPixels"))
        bucket, prefix = parse_s3_url(config["DestinationConfig"]["Uri"])
        metadata = s3_metadata(event.get("metadata", {}), {
            "aws_kinesisvideo_fragment_number": fragment.number,
            "aws_kinesisvideo_producer_timestamp": str(fragment.producer_ms),
            "aws_kinesisvideo_server_timestamp": str(fragment.server_ms)})
        with self._renders:
            images = self.sampler.render(request)
        for image in images:
            if image.content is None:
                continue  # NO_MEDIA / MEDIA_ERROR: GetImages would return no picture either
            key = prefix + image_name(event.get("prefix", ""), self.account_id, stream,
                                      fragment, image.time_ms, config["Format"])
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=image.content,
                                   Metadata=metadata,
                                   ContentType=f"image/{config['Format'].lower()}")
            except Exception as e:
                reason = permanent_failure(e)
                if reason is None:
                    raise
                raise DeliveryError(f"S3 refused s3://{bucket}/{key}: {reason}",
                                    permanent=True) from e

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = make_client(self.s3_endpoint_url)
        return self._s3

    def _post_notification(self, stream: Stream, fragment: Fragment, config: dict,
                           event: dict) -> None:
        uri = config["DestinationConfig"]["Uri"]
        topic = topic_arn(stream.arn, stream.name)
        subscription = subscription_arn(topic, uri)
        notification = self.signer.notification(
            message_id=str(uuid.uuid5(KEYS, f"{stream.arn}/{fragment.number}/notification")),
            topic_arn=topic, subject=SUBJECT,
            message=json.dumps(notification_message(stream, fragment, event)),
            timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"), subscription_arn=subscription)
        headers = {**self.signer.headers(notification, subscription),
                   "User-Agent": "kvslite-notifications"}
        # one deadline for the whole POST; refused destinations and redirects are permanent
        post_json(uri, json.dumps(notification).encode(), headers,
                  self.configs.webhook_policy, deadline_s=WEBHOOK_DEADLINE_S)


def image_name(image_prefix: str, account_id: str, stream: Stream, fragment: Fragment,
               time_ms: int, image_format: str) -> str:
    """AWS's object name for one generated image (see the module docstring)."""
    random_id = uuid.uuid5(KEYS, f"{stream.arn}/{fragment.number}/{time_ms}")
    image_prefix = events.image_prefix(image_prefix)  # outbox rows from before the rules
    parts = [image_prefix] if image_prefix else []
    parts += [account_id, stream.name, str(time_ms), str(random_id)]
    return "_".join(parts) + "." + EXTENSIONS[image_format]


def s3_metadata(custom: dict[str, str], aws: dict[str, str]) -> dict[str, str]:
    """AWS's metadata and as many custom pairs as S3 takes: HTTP-header-safe ASCII, within
    S3's 2 KB of user metadata. A pair that cannot go is left out rather than making the
    PutObject fail on every retry."""
    metadata = dict(aws)
    budget = S3_METADATA_BYTES - sum(len(k) + len(v) for k, v in aws.items())
    for name, value in custom.items():
        safe = name.isascii() and value.isascii() and name.replace("-", "").replace(
            "_", "").isalnum() and value.isprintable()
        if safe and len(name) + len(value) <= budget and name.lower() not in metadata:
            metadata[name] = value
            budget -= len(name) + len(value)
    return metadata


def notification_message(stream: Stream, fragment: Fragment, event: dict) -> dict:
    """AWS's notification message: the SNS Notification's Message."""
    return {"StreamArn": stream.arn, "FragmentNumber": fragment.number,
            "FragmentStartProducerTimestamp": fragment.producer_ms,
            "FragmentStartServerTimestamp": fragment.server_ms,
            "NotificationType": "PERSISTED",
            "NotificationPayload": event.get("metadata", {})}
