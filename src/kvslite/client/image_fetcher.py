"""Fetch still images from a stream's archive with GetImages, one file per sample time.

Works against kvslite or AWS (it only speaks the public API through boto3):

    from kvslite.client.image_fetcher import archived_media_client, fetch_images, parse_time

    client = archived_media_client("front-door", endpoint_url="http://127.0.0.1:4567")
    summary = fetch_images(client, "front-door", parse_time("-10m"), parse_time("now"),
                           "frames/", interval_ms=3000)
    print(summary.written, summary.no_media, summary.media_error)

Files are named by the sample's timestamp in UTC, `2026-11-27T06-24-51.496Z.jpg`: they sort
in time order and carry no colons. NO_MEDIA and MEDIA_ERROR samples get no file; they are
counted (and listed) in the returned Summary.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvslite.client.common import (
    DEFAULT_ENDPOINT_URL,
    boto3_client,
    credentials_and_region,
    duration_ms,
    format_time,
    parse_time,
    to_datetime,
    to_epoch_ms,
)

__all__ = [
    "DEFAULT_ENDPOINT_URL", "FetchError", "Summary", "archived_media_client", "fetch_images",
    "file_name", "format_time", "parse_interval", "parse_time", "sample_count", "to_datetime",
]

FORMATS = {"jpeg": ("JPEG", ".jpg"), "jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
SELECTORS = {"producer": "PRODUCER_TIMESTAMP", "server": "SERVER_TIMESTAMP"}
RETRYABLE = {"ClientLimitExceededException", "ThrottlingException"}


class FetchError(Exception):
    """GetImages (or finding its endpoint) failed; `code` is the AWS error code if any."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- times

def parse_interval(text: str | int) -> int:
    """A sampling interval -> ms: `3s`, `500ms`, `1m`, `1.5s`, or plain milliseconds."""
    ms: int | None
    if isinstance(text, int):
        ms = text
    else:
        stripped = text.strip().lower()
        ms = int(stripped) if stripped.isdigit() else duration_ms(stripped)
        if ms is None:
            raise ValueError(f"not an interval: {text!r} (use e.g. 3s, 500ms, 1m or plain ms)")
    if ms < 1:
        raise ValueError(f"the interval must be at least 1 ms, got {text!r}")
    return ms


def file_name(ms: int, extension: str = ".jpg") -> str:
    """Epoch ms -> `2026-11-27T06-24-51.496Z.jpg`: sortable, no colons."""
    return format_time(ms).replace(":", "-") + extension


def sample_count(start_ms: int, end_ms: int, interval_ms: int) -> int:
    """How many samples GetImages returns for the range: t_k = start + k*interval <= end."""
    return (end_ms - start_ms) // interval_ms + 1 if end_ms >= start_ms else 0


# ----------------------------------------------------------------------------- clients

def _stream_params(stream: str) -> dict:
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def archived_media_client(stream: str, *, endpoint_url: str | None = DEFAULT_ENDPOINT_URL,
                          region: str | None = None, session=None, config=None):
    """A boto3 `kinesis-video-archived-media` client for GetImages on `stream`.

    Its endpoint is the DataEndpoint that `kinesisvideo.get_data_endpoint(APIName=
    "GET_IMAGES")` returns from `endpoint_url` (the control plane: kvslite, or AWS's when
    None or an amazonaws.com URL). Credentials come from the usual boto3 chain; with none,
    requests go unsigned (kvslite.client.common says why)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    session = session or boto3.Session()
    credentials, region = credentials_and_region(None, region, session)
    config = config or Config(read_timeout=300, retries={"max_attempts": 3, "mode": "standard"})

    def client(service: str, endpoint: str | None):
        return boto3_client(service, endpoint_url=endpoint, credentials=credentials,
                            region=region, config=config, session=session)

    control = client("kinesisvideo", endpoint_url)
    try:
        endpoint = control.get_data_endpoint(APIName="GET_IMAGES",
                                             **_stream_params(stream))["DataEndpoint"]
    except ClientError as e:
        raise _client_error("GetDataEndpoint", e) from None
    except EndpointConnectionError as e:
        raise FetchError(f"cannot reach {endpoint_url or 'AWS'} ({e}); is the server "
                         f"running?") from None
    except BotoCoreError as e:
        raise FetchError(f"GetDataEndpoint failed: {e}") from None
    return client("kinesis-video-archived-media", endpoint)


def _client_error(operation: str, e) -> FetchError:
    err = e.response.get("Error", {})
    code = err.get("Code") or "Unknown"
    message = err.get("Message") or str(e)
    return FetchError(f"{operation} failed: {code}: {message}", code=code)


# ----------------------------------------------------------------------------- fetching

@dataclass
class Summary:
    written: int = 0
    no_media: int = 0
    media_error: int = 0
    paths: list[Path] = field(default_factory=list)
    total: int | None = None           # samples expected (None if the interval was unknown)
    samples: int = 0                   # entries GetImages returned
    errors: list[tuple[int, str]] = field(default_factory=list)  # (epoch ms, Error) per sample
    bytes_written: int = 0
    pages: int = 0
    elapsed_s: float = 0.0
    _runs: list = field(default_factory=list, repr=False, compare=False)
    _previous_error: str | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        rate = f", {self.samples / self.elapsed_s:.1f} images/s" if self.elapsed_s > 0 else ""
        text = (f"{self.written} image(s) written ({self.bytes_written / 1e6:.2f} MB), "
                f"{self.no_media} NO_MEDIA, {self.media_error} MEDIA_ERROR in "
                f"{self.elapsed_s:.1f} s{rate}")
        other = self.samples - self.written - self.no_media - self.media_error
        if other:
            text += f", {other} other error(s)"
        return text

    def error_runs(self) -> list[tuple[str, int, int, int]]:
        """Runs of consecutive samples with the same Error: (Error, first ms, last ms, n)."""
        return [tuple(run) for run in self._runs]


def fetch_images(client, stream: str, start, end, out_dir, *, interval_ms: int | None = None,
                 image_format: str = "jpeg", quality: int | None = None,
                 width: int | None = None, height: int | None = None,
                 selector: str = "producer", max_results: int | None = None,
                 progress: bool = True, retries: int = 5) -> Summary:
    """GetImages over [start, end] (epoch ms, aware datetimes or parse_time strings), every
    `interval_ms` (None: the server's minimum), following NextToken; one file per image in
    `out_dir` named by its timestamp (see file_name). Returns a Summary; raises FetchError on
    an API error (ClientLimitExceededException is retried `retries` times with back-off).

    `client` is a `kinesis-video-archived-media` client (see archived_media_client).
    `selector`: producer | server (or PRODUCER_TIMESTAMP | SERVER_TIMESTAMP)."""
    start_ms, end_ms = to_epoch_ms(start), to_epoch_ms(end)
    if start_ms > end_ms:
        raise FetchError(f"the start ({format_time(start_ms)}) is after the end "
                         f"({format_time(end_ms)})")
    api_format, extension = _api_format(image_format)
    params = _get_images_params(stream, start_ms, end_ms, api_format, selector,
                                interval_ms=interval_ms, quality=quality, width=width,
                                height=height, max_results=max_results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(total=sample_count(start_ms, end_ms, interval_ms) if interval_ms else None)
    bar = _progress_bar(stream, summary.total, shown=progress)
    t0 = time.monotonic()
    try:
        for page in _pages(client, params, retries):
            summary.pages += 1
            images = page.get("Images") or []
            if summary.total is None:
                summary.total = bar.total = _total_from_step(images, start_ms, end_ms)
            for image in images:
                _save(image, out, extension, summary)
            bar.update(len(images))
            bar.set_postfix_str(f"{summary.no_media} NO_MEDIA, "
                                f"{summary.media_error} MEDIA_ERROR", refresh=False)
    finally:
        summary.elapsed_s = time.monotonic() - t0
        bar.close()
    if summary.total is None:
        summary.total = summary.samples
    return summary


def _api_format(image_format: str) -> tuple[str, str]:
    """jpeg | jpg | png -> (GetImages Format, file extension)."""
    try:
        return FORMATS[image_format.lower()]
    except KeyError:
        raise ValueError(f"image_format must be jpeg or png, not {image_format!r}") from None


def _get_images_params(stream: str, start_ms: int, end_ms: int, api_format: str,
                       selector: str, *, interval_ms: int | None, quality: int | None,
                       width: int | None, height: int | None,
                       max_results: int | None) -> dict:
    """The GetImages request (without NextToken); options left at None are not sent."""
    selector_type = SELECTORS.get(selector.lower(), selector.upper())
    if selector_type not in SELECTORS.values():
        raise ValueError(f"selector must be producer or server, not {selector!r}")
    if quality is not None and api_format != "JPEG":
        raise ValueError("quality applies to JPEG only")
    params: dict = {**_stream_params(stream), "ImageSelectorType": selector_type,
                    "StartTimestamp": to_datetime(start_ms), "EndTimestamp": to_datetime(end_ms),
                    "Format": api_format}
    if interval_ms is not None:
        params["SamplingInterval"] = int(interval_ms)
    if quality is not None:
        params["FormatConfig"] = {"JPEGQuality": str(int(quality))}
    if width is not None:
        params["WidthPixels"] = int(width)
    if height is not None:
        params["HeightPixels"] = int(height)
    if max_results is not None:
        params["MaxResults"] = int(max_results)
    return params


def _pages(client, params: dict, retries: int):
    """Every GetImages response for the request, following NextToken."""
    token = None
    while True:
        page = _get_images(client, dict(params, NextToken=token) if token else params, retries)
        yield page
        token = page.get("NextToken")
        if not token:
            return


def _get_images(client, request: dict, retries: int) -> dict:
    """One GetImages call. Throttling (ClientLimitExceededException: too many requests in
    flight; ThrottlingException) is retried `retries` times with back-off."""
    from botocore.exceptions import BotoCoreError, ClientError

    attempt = 0
    while True:
        try:
            return client.get_images(**request)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in RETRYABLE and attempt < retries:
                time.sleep(min(0.25 * 2 ** attempt, 5.0))
                attempt += 1
                continue
            raise _client_error("GetImages", e) from None
        except BotoCoreError as e:
            raise FetchError(f"GetImages failed: {e}") from None


def _total_from_step(images: list, start_ms: int, end_ms: int) -> int | None:
    """No interval was given, so the server used its minimum: learn it from the first two
    sample times, and with it how many samples to expect (None if it cannot tell yet)."""
    if len(images) < 2:
        return None
    step = to_epoch_ms(images[1]["TimeStamp"]) - to_epoch_ms(images[0]["TimeStamp"])
    return sample_count(start_ms, end_ms, step) if step > 0 else None


def _progress_bar(stream: str, total: int | None, *, shown: bool):
    """A tqdm bar on stderr; with shown=False a disabled one, which draws nothing."""
    from tqdm import tqdm

    return tqdm(total=total, desc=stream, unit=" img", file=sys.stderr, dynamic_ncols=True,
                disable=not shown)


def _save(image: dict, out: Path, extension: str, summary: Summary) -> None:
    ms = to_epoch_ms(image["TimeStamp"])
    summary.samples += 1
    error = image.get("Error")
    content = image.get("ImageContent")
    if error or not content:
        error = error or "EMPTY"
        summary.errors.append((ms, error))
        if summary._previous_error == error:
            summary._runs[-1][2] = ms
            summary._runs[-1][3] += 1
        else:
            summary._runs.append([error, ms, ms, 1])
        summary._previous_error = error
        if error == "NO_MEDIA":
            summary.no_media += 1
        elif error == "MEDIA_ERROR":
            summary.media_error += 1
        return
    summary._previous_error = None
    data = base64.b64decode(content) if isinstance(content, str) else bytes(content)
    path = out / file_name(ms, extension)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    summary.written += 1
    summary.bytes_written += len(data)
    summary.paths.append(path)
