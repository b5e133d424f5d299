"""Fragment events: images and notifications a producer asks for with MKV tags, and the
stream configurations (AWS's ImageGenerationConfiguration and NotificationConfiguration)
that say what to do with them.

A producer marks a fragment with a Tags element written just before its Cluster (the AWS
producer SDK's putKinesisVideoEventMetadata): a SimpleTag AWS_KINESISVIDEO_IMAGE_GENERATION
(optionally AWS_KINESISVIDEO_IMAGE_PREFIX) or AWS_KINESISVIDEO_NOTIFICATION, and custom
name/value pairs. Once the fragment is PERSISTED on a stream whose configuration of that
kind is ENABLED, the work is recorded in the outbox in the fragment's own commit, and
delivery.py does it afterwards.
"""

from __future__ import annotations

import json
import logging

from kvslite.server import metrics
from kvslite.server.archive.control_plane import require_archive
from kvslite.server.archive.sampling import check_sampling_interval, jpeg_quality
from kvslite.server.api_errors import invalid
from kvslite.media.limits import (
    IMAGE_GENERATION_TAG,
    IMAGE_PREFIX_TAG,
    MAX_EVENT_NAME_BYTES,
    MAX_EVENT_PAIRS,
    MAX_EVENT_VALUE_BYTES,
    NOTIFICATION_TAG,
    RESERVED_TAG_PREFIX,
    clean_image_prefix,
)
from kvslite.server.store.metadata import MetadataStore, Stream
from kvslite.server.store.s3 import parse_s3_url
from kvslite.server.webhook_policy import WebhookPolicy

log = logging.getLogger("kvslite.events")

IMAGE_GENERATION = "image-generation"
NOTIFICATION = "notification"
DEFAULT_QUEUE_LIMIT = 10_000
DEFAULT_STREAM_LIMIT = 1000


def events_in(tags: list[tuple[str, str]]) -> dict[str, dict]:
    """The events one Tags element asks for: kind -> {"prefix": ..., "metadata": {...}}.
    Custom pairs are the tags whose names do not start with AWS (reserved), within AWS's
    limits (10 pairs, names up to 128 bytes, values up to 256); others are ignored."""
    names = {name for name, _ in tags}
    custom = dict([(n, v) for n, v in tags
                   if n and not n.startswith(RESERVED_TAG_PREFIX)
                   and _fits(n, MAX_EVENT_NAME_BYTES) and _fits(v, MAX_EVENT_VALUE_BYTES)
                   ][:MAX_EVENT_PAIRS])
    found = {}
    if IMAGE_GENERATION_TAG in names:
        prefix = image_prefix(dict(tags).get(IMAGE_PREFIX_TAG) or "")
        found[IMAGE_GENERATION] = {"prefix": prefix, "metadata": custom}
    if NOTIFICATION_TAG in names:
        found[NOTIFICATION] = {"metadata": custom}
    return found


def image_prefix(tagged: str) -> str:
    """The producer's image prefix, cleaned; "" (images without one) when it breaks the rules
    (kvslite.media.limits), rather than losing the images."""
    try:
        return clean_image_prefix(tagged)
    except ValueError as e:
        log.warning("image prefix %r is ignored: %s", tagged[:300], e)
        return ""


def _fits(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit


class EventConfigs:
    """The streams' event configurations: validated on update, kept in the store as the
    API's JSON, and consulted when a tagged fragment is persisted."""

    def __init__(self, store: MetadataStore, *, region: str, min_sampling_interval_ms: int,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 stream_limit: int = DEFAULT_STREAM_LIMIT,
                 webhook_policy: WebhookPolicy = WebhookPolicy(), media_url: str | None = None):
        self.store = store
        self.region = region
        self.min_sampling_interval_ms = min_sampling_interval_ms
        self.queue_limit = queue_limit
        self.stream_limit = stream_limit
        self.webhook_policy = webhook_policy  # the delivery worker asks it too
        # kvslite's own media (bucket, prefix), where no image may go: the orphan collector
        # would delete it, and a prefix could reach a stream's folder
        self.media_location = parse_s3_url(media_url) \
            if media_url and media_url.startswith("s3://") else None

    def describe(self, stream: Stream, kind: str) -> dict | None:
        stored = self.store.get_stream_config(stream.arn, kind)
        return json.loads(stored) if stored is not None else None

    def update(self, stream: Stream, kind: str, config: dict | None) -> None:
        """Set the configuration (the API's shape, already checked against the model), or
        delete it with None."""
        require_archive(stream)  # AWS: NoDataRetentionException
        if config is not None:
            (self._check_image_generation if kind == IMAGE_GENERATION
             else self._check_notification)(config)
        self.store.put_stream_config(stream.arn, kind,
                                     None if config is None else json.dumps(config))

    def _check_image_generation(self, config: dict) -> None:
        destination = config["DestinationConfig"]
        if destination["DestinationRegion"] != self.region:
            raise invalid(f"DestinationRegion {destination['DestinationRegion']} is not the "
                          f"stream's region ({self.region})")
        try:
            bucket, prefix = parse_s3_url(destination["Uri"])
        except ValueError:
            raise invalid(f"DestinationConfig.Uri must be s3://bucket/optional/prefix, got "
                          f"{destination['Uri']!r}") from None
        if self.media_location is not None and self._overlaps_media(bucket, prefix):
            raise invalid(f"DestinationConfig.Uri {destination['Uri']!r} overlaps kvslite's own "
                          f"media location (--media-url s3://{bucket}/"
                          f"{self.media_location[1]}): give images a bucket or prefix apart")
        check_sampling_interval(config["SamplingInterval"], self.min_sampling_interval_ms)
        # AWS documents FormatConfig alike here and for GetImages: JPEGQuality 1-100, with
        # no word against PNG; as GetImages, the value is checked and PNG ignores it
        jpeg_quality(config.get("FormatConfig"))

    def _overlaps_media(self, bucket: str, prefix: str) -> bool:
        """Whether keys under s3://bucket/prefix and kvslite's media can be the same."""
        if self.media_location is None or bucket != self.media_location[0]:
            return False
        media_prefix = self.media_location[1]
        return prefix.startswith(media_prefix) or media_prefix.startswith(prefix)

    def _check_notification(self, config: dict) -> None:
        uri = config["DestinationConfig"]["Uri"]
        if uri.startswith("arn:"):
            raise invalid("kvslite delivers notifications to an http:// or https:// webhook "
                          "(a POST of the SNS-shaped message), not to an SNS topic; give the "
                          "webhook's URL as DestinationConfig.Uri")
        try:  # a host name is checked when delivering, on the addresses it resolves to
            self.webhook_policy.check_uri(uri)
        except ValueError as e:
            raise invalid(f"DestinationConfig.Uri {uri!r}: {e}") from None

    def enabled(self, stream_arn: str, kind: str) -> dict | None:
        """The configuration of `kind`, if ENABLED."""
        stored = self.store.get_stream_config(stream_arn, kind)
        config = json.loads(stored) if stored is not None else None
        return config if config and config.get("Status") == "ENABLED" else None

    def deliveries_for(self, stream: Stream, events: dict[str, dict]) -> list[tuple[str, str]]:
        """The outbox rows a fragment with `events` gets: those whose configuration is
        ENABLED, unless the outbox has no room for the stream (then counted and logged,
        never blocking)."""
        wanted = [(kind, json.dumps(event)) for kind, event in events.items()
                  if self.enabled(stream.arn, kind)]
        if wanted and not self._has_room(stream):
            metrics.DELIVERIES.labels("any", "dropped").inc(len(wanted))
            return []
        return wanted

    def _has_room(self, stream: Stream) -> bool:
        """Room for one more fragment's events of `stream`: below its own limit, and below
        the total limit or, past it, below its fair share (the limit divided among the
        streams waiting), up to twice the limit. A few failing destinations that fill the
        outbox thus never crowd out the other streams' events."""
        own = self.store.count_deliveries(stream.arn)
        if own >= self.stream_limit:
            log.warning("%s has %d deliveries waiting, its limit: its fragment events are "
                        "dropped", stream.name, own)
            return False
        total = self.store.count_deliveries()
        if total < self.queue_limit:
            return True
        streams = self.store.count_delivery_streams() + (0 if own else 1)
        if own * streams < self.queue_limit and total < 2 * self.queue_limit:
            return True
        log.warning("the delivery outbox holds %d items, %s's share of its limit (%d): its "
                    "fragment events are dropped", total, stream.name, self.queue_limit)
        return False
