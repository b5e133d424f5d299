"""Fetch still images from a stream's archive with GetImages, one file per sample time.

Works against kvslite or AWS (it only speaks the public API through boto3):

    from kvslite.fetch_images import archived_media_client, fetch_images, parse_time

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
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from kvslite.config import DEFAULT_ENDPOINT_URL

__all__ = [
    "DEFAULT_ENDPOINT_URL", "FetchError", "Summary", "archived_media_client", "fetch_images",
    "file_name", "format_time", "parse_interval", "parse_time", "sample_count", "to_datetime",
]

DUMMY_CREDENTIALS = ("kvslite", "kvslite")
FORMATS = {"jpeg": ("JPEG", ".jpg"), "jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
SELECTORS = {"producer": "PRODUCER_TIMESTAMP", "server": "SERVER_TIMESTAMP"}
RETRYABLE = {"ClientLimitExceededException", "ThrottlingException"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")


class FetchError(Exception):
    """GetImages (or finding its endpoint) failed; `code` is the AWS error code if any."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- times

def _duration_ms(text: str) -> int | None:
    """'10m', '90s', '1h30m', '500ms' -> ms; None if `text` is not a duration."""
    text = text.strip().lower()
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    return round(total) if pos == len(text) and pos else None


def parse_time(text: str, now_ms: int | None = None) -> int:
    """A time on the command line -> epoch ms.

    Accepts ISO 8601 with or without a zone (none means UTC; `2026-11-27`, `2026-11-27T06:24`,
    `2026-11-27T06:24:51.496+01:00`, the file-name form `2026-11-27T06-24-51.496Z`), epoch
    seconds (`1764224691.5`), `now`, and times relative to now: `-10m`, `-90s`, `-2h`, `-1d`,
    `-500ms`, `-1h30m`, `now-5m` (a leading `+` counts forward)."""
    if now_ms is None:
        now_ms = round(time.time() * 1000)
    raw = text
    text = text.strip()
    low = text.lower()
    if low == "now":
        return now_ms
    rel = low[3:].strip() if low.startswith("now") else low
    if rel[:1] in ("-", "+"):
        amount = _duration_ms(rel[1:])
        if amount is not None:
            return now_ms - amount if rel[0] == "-" else now_ms + amount
        raise ValueError(f"not a relative time: {raw!r} (use e.g. -10m, -90s, -2h, -1d)")
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    iso = text
    # The file-name form: 2026-11-27T06-24-51.496Z -> 2026-11-27T06:24:51.496Z
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}[T ])(\d{2})-(\d{2})(?:-(\d{2}(?:\.\d+)?))?(.*)", iso)
    if m:
        iso = f"{m.group(1)}{m.group(2)}:{m.group(3)}" + \
            (f":{m.group(4)}" if m.group(4) else "") + m.group(5)
    try:
        when = datetime.fromisoformat(iso.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not a time: {raw!r} (use ISO 8601, epoch seconds, now, or a "
                         f"relative time such as -10m)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round((when - _EPOCH) / timedelta(milliseconds=1))


def parse_interval(text: str | int) -> int:
    """A sampling interval -> ms: `3s`, `500ms`, `1m`, `1.5s`, or plain milliseconds."""
    ms: int | None
    if isinstance(text, int):
        ms = text
    else:
        stripped = text.strip().lower()
        ms = int(stripped) if stripped.isdigit() else _duration_ms(stripped)
        if ms is None:
            raise ValueError(f"not an interval: {text!r} (use e.g. 3s, 500ms, 1m or plain ms)")
    if ms < 1:
        raise ValueError(f"the interval must be at least 1 ms, got {text!r}")
    return ms


def to_datetime(ms: int) -> datetime:
    """Epoch ms -> an aware UTC datetime, exact to the millisecond."""
    return _EPOCH + timedelta(milliseconds=ms)


def _to_ms(value) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return round((value - _EPOCH) / timedelta(milliseconds=1))
    if isinstance(value, str):
        return parse_time(value)
    return int(value)


def format_time(ms: int) -> str:
    """Epoch ms -> `2026-11-27T06:24:51.496Z`."""
    return to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def file_name(ms: int, extension: str = ".jpg") -> str:
    """Epoch ms -> `2026-11-27T06-24-51.496Z.jpg`: sortable, no colons."""
    return format_time(ms).replace(":", "-") + extension


def sample_count(start_ms: int, end_ms: int, interval_ms: int) -> int:
    """How many samples GetImages returns for the range: t_k = start + k*interval <= end."""
    return (end_ms - start_ms) // interval_ms + 1 if end_ms >= start_ms else 0


# ----------------------------------------------------------------------------- clients

def _is_aws(url: str | None) -> bool:
    if url is None:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


def _stream_params(stream: str) -> dict:
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def archived_media_client(stream: str, *, endpoint_url: str | None = DEFAULT_ENDPOINT_URL,
                          region: str | None = None, session=None, config=None):
    """A boto3 `kinesis-video-archived-media` client for GetImages on `stream`.

    Its endpoint is the DataEndpoint that `kinesisvideo.get_data_endpoint(APIName=
    "GET_IMAGES")` returns from `endpoint_url` (the control plane: kvslite, or AWS's when
    None or an amazonaws.com URL). Credentials come from the usual boto3 chain; for an
    endpoint that is not AWS's, dummy ones are used when none are configured."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    session = session or boto3.Session()
    region = region or session.region_name or "us-east-1"
    kwargs: dict = {"region_name": region}
    try:
        have_credentials = session.get_credentials() is not None
    except BotoCoreError:
        have_credentials = False
    if not have_credentials and not _is_aws(endpoint_url):
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = DUMMY_CREDENTIALS
    config = config or Config(read_timeout=300, retries={"max_attempts": 3, "mode": "standard"})
    control = session.client("kinesisvideo", endpoint_url=endpoint_url, config=config, **kwargs)
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
    return session.client("kinesis-video-archived-media", endpoint_url=endpoint, config=config,
                          **kwargs)


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
    start_ms, end_ms = _to_ms(start), _to_ms(end)
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
    step = _to_ms(images[1]["TimeStamp"]) - _to_ms(images[0]["TimeStamp"])
    return sample_count(start_ms, end_ms, step) if step > 0 else None


def _progress_bar(stream: str, total: int | None, *, shown: bool):
    """A tqdm bar on stderr; with shown=False a disabled one, which draws nothing."""
    from tqdm import tqdm

    return tqdm(total=total, desc=stream, unit=" img", file=sys.stderr, dynamic_ncols=True,
                disable=not shown)


def _save(image: dict, out: Path, extension: str, summary: Summary) -> None:
    ms = _to_ms(image["TimeStamp"])
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
