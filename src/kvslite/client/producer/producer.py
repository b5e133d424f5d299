"""Producer: uploads video to one stream, control plane (boto3) and PutMedia together."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from kvslite.client.common import DEFAULT_ENDPOINT_URL, boto3_client, credentials_and_region

from .acks import Ack
from .connection import PutMediaUpload, putmedia_headers
from .errors import HttpError, ProducerError
from .event_tags import Events, event_chooser
from .failover import MAX_RETRIES, FragmentFeed, backoff_s, retryable
from .clusters import MAX_FRAGMENT_MS, USER_AGENT, media_chunks
from .readahead import ReadAhead
from .source import MediaSource, open_source
from .summary import PutSummary
from .timestamps import now_ms, to_epoch_ms
from .video import MEDIA_TYPES, VideoFormat


class Producer:
    """Uploads video to one stream with PutMedia.

    `endpoint_url` is the control-plane URL (kvslite, or https://kinesisvideo.<region>.
    amazonaws.com for AWS); None means $KVSLITE_ENDPOINT_URL or DEFAULT_ENDPOINT_URL.
    `credentials`: a botocore Credentials object, a (key, secret[, token]) tuple, or None
    for the usual AWS chain (environment, ~/.aws, ...); with no credentials anywhere the
    requests go unsigned. The data endpoint comes from GetDataEndpoint (APIName
    PUT_MEDIA) unless `data_endpoint` is given.

    A dropped connection, or an error that another connection may not meet, is retried up
    to `max_retries` times in a row with backoff, resending every fragment not yet
    acknowledged (see failover.py); 0 turns failover off. A fragment that gets no ack for
    `ack_timeout` seconds counts as a dropped connection (a frozen node).
    """

    def __init__(self, stream_name: str | None = None, *, stream_arn: str | None = None,
                 endpoint_url: str | None = None, region: str | None = None, credentials=None,
                 data_endpoint: str | None = None, connect_timeout: float = 10.0,
                 ack_timeout: float = 30.0, user_agent: str = USER_AGENT,
                 max_retries: int = MAX_RETRIES):
        if stream_name is None and stream_arn is None:
            raise ValueError("give a stream_name or a stream_arn")
        if stream_name is not None and stream_name.startswith("arn:") and stream_arn is None:
            stream_name, stream_arn = None, stream_name
        self.stream_name, self.stream_arn = stream_name, stream_arn
        self.endpoint_url = (endpoint_url or os.environ.get("KVSLITE_ENDPOINT_URL")
                             or DEFAULT_ENDPOINT_URL)
        self._data_endpoint = data_endpoint
        self._discovered_endpoint = data_endpoint is None  # from GetDataEndpoint
        self.connect_timeout, self.ack_timeout = connect_timeout, ack_timeout
        self.max_retries = max_retries
        self.user_agent = user_agent
        self.credentials, self.region = credentials_and_region(credentials, region)
        self._client = None
        self._retention: int | None = None  # DataRetentionInHours, once described

    @property
    def stream(self) -> str:
        return self.stream_name or self.stream_arn or ""  # (__init__ requires one)

    def _stream_params(self) -> dict:
        return {"StreamName": self.stream_name} if self.stream_name else \
            {"StreamARN": self.stream_arn}

    # -------------------------------------------------------------------------- control plane

    @property
    def client(self):
        """A boto3 `kinesisvideo` (control plane) client for this producer."""
        if self._client is None:
            from botocore.config import Config

            self._client = boto3_client("kinesisvideo", endpoint_url=self.endpoint_url,
                                        credentials=self.credentials, region=self.region,
                                        config=Config(retries={"max_attempts": 3}))
        return self._client

    def _call(self, operation: str, **params):
        """A control-plane call; its errors as HttpError / ProducerError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**params)
        except ClientError as e:
            err = e.response.get("Error", {})
            raise HttpError(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
                            err.get("Code", "Unknown"), err.get("Message", str(e)),
                            e.operation_name) from None
        except BotoCoreError as e:
            raise ProducerError(f"{operation}: {e}") from None

    def describe(self) -> dict:
        """DescribeStream's StreamInfo (raises HttpError ResourceNotFoundException)."""
        info = self._call("describe_stream", **self._stream_params())["StreamInfo"]
        self._retention = info.get("DataRetentionInHours")
        return info

    def ensure_stream(self, *, create: bool = False, retention_hours: int = 24,
                      media_type: str = "video/h264", wait_s: float = 60.0) -> dict:
        """DescribeStream; with `create`, CreateStream when it is missing and wait for ACTIVE.
        Returns StreamInfo."""
        try:
            info = self.describe()
        except HttpError as e:
            if e.code != "ResourceNotFoundException" or not create:
                raise
            self._create(retention_hours, media_type)
            info = self.describe()
        deadline = time.monotonic() + wait_s
        while info.get("Status") in ("CREATING", "UPDATING") and time.monotonic() < deadline:
            time.sleep(1)
            info = self.describe()
        if info.get("Status") not in (None, "ACTIVE"):
            raise ProducerError(f"stream {self.stream} is {info.get('Status')}, not ACTIVE")
        return info

    def _create(self, retention_hours: int, media_type: str) -> None:
        if self.stream_name is None:
            raise ProducerError("--create needs a stream name, not an ARN") from None
        try:
            self._call("create_stream", StreamName=self.stream_name,
                       DataRetentionInHours=retention_hours, MediaType=media_type)
        except HttpError as e:
            if e.code != "ResourceInUseException":  # created meanwhile: fine
                raise

    def data_endpoint(self) -> str:
        if self._data_endpoint is None:
            self._data_endpoint = self._call("get_data_endpoint", APIName="PUT_MEDIA",
                                             **self._stream_params())["DataEndpoint"]
        return self._data_endpoint

    # -------------------------------------------------------------------------- uploads

    def put(self, packets: Iterable, video: VideoFormat | None = None, **kwargs) -> PutSummary:
        """Upload `packets` (see put_async) and wait for their acks. Blocking."""
        return asyncio.run(self.put_async(packets, video, **kwargs))

    async def put_async(self, packets: Iterable, video: VideoFormat | None = None, *,
                        start_timestamp: int | float | str | datetime | None = None,
                        absolute_pts: bool = False, realtime: bool = False,
                        max_fragment_ms: int = MAX_FRAGMENT_MS,
                        on_ack: Callable[[Ack, PutSummary], None] | None = None,
                        on_sent: Callable[[int, PutSummary], None] | None = None,
                        on_retry: Callable[[ProducerError, float, PutSummary], None]
                        | None = None,
                        stop: threading.Event | None = None,
                        events: Events = None) -> PutSummary:
        """Upload `packets`: an iterable (it may block, e.g. a live source; it runs in a
        thread) of `(pts_ms, keyframe, payload)` tuples or `Packet`s in decode order.

        Producer timestamps: `start_timestamp` (epoch ms, a datetime, or an ISO 8601 /
        epoch-seconds string; default now) + the pts offset from the first keyframe; with
        `absolute_pts` the pts values already are epoch ms. `realtime` paces the upload at
        the media's own rate. Setting `stop` ends the upload cleanly at the next packet.
        `on_retry(error, delay_s, summary)` is called before each reconnect.

        `events` marks fragments for AWS image generation and/or notification: a
        FragmentEvent for every fragment, or a function `(index, timecode_ms) -> FragmentEvent
        | None` called for each fragment in send order (index 0, 1, ...; its cluster's
        producer timecode), from the thread that reads the packets. Marked fragments are
        counted in `summary.fragments_marked`.
        Raises AckError, HttpError, SourceError or ProducerError (with `.summary`).
        """
        choose_event = event_chooser(events)  # a wrong type fails now, not mid-upload
        start_ms = to_epoch_ms(start_timestamp)
        summary = PutSummary(stream=self.stream)
        t0 = time.monotonic()
        body = media_chunks(packets, video or VideoFormat(), start_ms=start_ms,
                            absolute_pts=absolute_pts, max_fragment_ms=max_fragment_ms,
                            stop=stop, events=choose_event)
        feed = FragmentFeed(ReadAhead(body))  # reads ahead while we connect
        producer_start_ms = start_ms if start_ms is not None else now_ms()
        failures = 0  # in a row, without a fragment acknowledged in between
        try:
            await self._learn_retention(summary)
            while True:
                url = await self._putmedia_url(refresh=failures > 0)
                upload = PutMediaUpload(
                    url, self._headers(url, producer_start_ms), summary, realtime=realtime,
                    connect_timeout=self.connect_timeout, ack_timeout=self.ack_timeout,
                    on_ack=on_ack, on_sent=on_sent, stop=stop)
                try:
                    await upload.run(feed)
                    break
                except ProducerError as e:
                    failures = 1 if upload.acked_any else failures + 1
                    if not retryable(e) or failures > self.max_retries:
                        raise
                    delay = backoff_s(failures)
                    summary.retries += 1
                    if on_retry is not None:
                        on_retry(e, delay, summary)
                    await asyncio.sleep(delay)
                    feed.restart()
        except ProducerError as e:
            e.summary = summary
            raise
        finally:
            feed.close()
            summary.elapsed_s = time.monotonic() - t0
        return summary

    async def _putmedia_url(self, *, refresh: bool) -> str:
        """PutMedia's URL; on a reconnect, asked for again (the endpoint may have moved),
        keeping the last one if the control plane cannot answer either."""
        if refresh and self._discovered_endpoint:
            previous, self._data_endpoint = self._data_endpoint, None
            try:
                await asyncio.to_thread(self.data_endpoint)
            except ProducerError:
                self._data_endpoint = previous
        return (await asyncio.to_thread(self.data_endpoint)).rstrip("/") + "/putMedia"

    def _headers(self, url: str, producer_start_ms: int) -> list[tuple[str, str]]:
        """Signed afresh for each connection: a signature is only valid for minutes."""
        return putmedia_headers(url, stream_name=self.stream_name, stream_arn=self.stream_arn,
                                producer_start_ms=producer_start_ms,
                                credentials=self.credentials, region=self.region,
                                user_agent=self.user_agent)

    async def _learn_retention(self, summary: PutSummary) -> None:
        """With retention 0, RECEIVED is the final ack: find out before uploading."""
        if self._retention is None and self._data_endpoint is None:
            try:
                await asyncio.to_thread(self.describe)
            except HttpError:
                pass  # GetDataEndpoint or PutMedia will say what is wrong
        if self._retention is not None:
            summary.data_retained = self._retention > 0

    def put_source(self, source: str, *, create: bool = False, retention_hours: int = 24,
                   realtime: bool = False, start_timestamp=None,
                   source_options: dict | None = None,
                   on_source: Callable[[MediaSource], None] | None = None,
                   **kwargs) -> PutSummary:
        """Upload a file or live URL (see put_source())."""
        media = open_source(source, options=source_options)
        try:
            if create:
                self.ensure_stream(create=True, retention_hours=retention_hours,
                                   media_type=MEDIA_TYPES[media.video.codec])
            start_ms = to_epoch_ms(start_timestamp)
            if start_ms is None:
                start_ms = now_ms()
                if not realtime and media.duration_ms:
                    # A file sent faster than real time: stamp it as if it had just been
                    # recorded, so that no fragment carries a time in the future.
                    start_ms -= media.duration_ms
            if on_source is not None:
                on_source(media)
            return self.put(media.packets, media.video, start_timestamp=start_ms,
                            realtime=realtime, **kwargs)
        finally:
            try:
                media.packets.close()  # if the upload never started it; else its thread did
            except ValueError:
                pass  # still running in an abandoned source thread; it stops at the next packet


def put_source(source: str, stream: str, *, endpoint_url: str | None = None,
               region: str | None = None, credentials=None, create: bool = False,
               retention_hours: int = 24, realtime: bool = False, start_timestamp=None,
               max_retries: int = MAX_RETRIES, ack_timeout: float = 30.0,
               **kwargs) -> PutSummary:
    """Upload a video file or live URL (anything FFmpeg demuxes: mp4, mkv, ts, rtsp://,
    http://...) to `stream` (a name or an ARN), remuxing its first video stream (H.264 or
    H.265) without re-encoding; audio is skipped.

    `start_timestamp` (epoch ms, datetime, ISO 8601 / epoch seconds string) is the producer
    time of the first keyframe. Default: now with `realtime` or for live sources; for a file
    sent faster than real time, now minus its duration (it "ends now"). `create` creates a
    missing stream with `retention_hours`. A lost connection is retried `max_retries` times
    in a row (see Producer), as is a fragment without an ack for `ack_timeout` seconds.
    Other keyword arguments go to Producer.put_async.
    """
    producer = Producer(stream, endpoint_url=endpoint_url, region=region, credentials=credentials,
                        max_retries=max_retries, ack_timeout=ack_timeout)
    return producer.put_source(source, create=create, retention_hours=retention_hours,
                               realtime=realtime, start_timestamp=start_timestamp, **kwargs)

