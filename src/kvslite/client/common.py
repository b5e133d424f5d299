"""What kvslite's client libraries (the producer, the image fetcher) share, without any
server code: where kvslite listens by default, one credential policy for their boto3
clients, and times as people type them.

The credential policy: credentials given, else the usual AWS chain (environment, ~/.aws,
...); with none anywhere, requests go unsigned. kvslite without credentials accepts them;
a server that requires SigV4 (kvslite with --access-key-id, or AWS) refuses them with an
error that names the missing signature, where made-up keys would get a misleading one.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import overload

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4567
# Where clients (kvslite put / images, the producer) look for a server by default.
DEFAULT_ENDPOINT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_REGION = "us-east-1"


# ----------------------------------------------------------------------------- boto3

def credentials_and_region(credentials=None, region: str | None = None, session=None):
    """(botocore Credentials or None, region): what was given, else the AWS chain's.
    `credentials` may be a Credentials object or a (key, secret[, token]) tuple."""
    from botocore.credentials import Credentials
    from botocore.exceptions import BotoCoreError

    if isinstance(credentials, (tuple, list)):
        credentials = Credentials(*credentials)
    if credentials is None or region is None:
        import boto3

        session = session or boto3.Session()
        if credentials is None:
            try:
                credentials = session.get_credentials()
            except BotoCoreError:  # a broken profile: as good as none
                credentials = None
        region = region or session.region_name
    return credentials, region or DEFAULT_REGION


def boto3_client(service: str, *, endpoint_url: str | None, credentials, region: str,
                 config=None, session=None):
    """A boto3 client signing with `credentials`, or unsigned when they are None."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = config or Config()
    kwargs: dict = {}
    if credentials is None:
        config = config.merge(Config(signature_version=UNSIGNED))
    else:
        frozen = credentials.get_frozen_credentials() \
            if hasattr(credentials, "get_frozen_credentials") else credentials
        kwargs = {"aws_access_key_id": frozen.access_key,
                  "aws_secret_access_key": frozen.secret_key,
                  "aws_session_token": frozen.token}
    return (session or boto3).client(service, endpoint_url=endpoint_url, region_name=region,
                                     config=config, **kwargs)


# ----------------------------------------------------------------------------- times

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")


def now_ms() -> int:
    return round(time.time() * 1000)


def duration_ms(text: str) -> int | None:
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


def parse_time(text: str, now: int | None = None) -> int:
    """A time on the command line -> epoch ms.

    Accepts ISO 8601 with or without a zone (none means UTC; `2026-11-27`, `2026-11-27T06:24`,
    `2026-11-27T06:24:51.496+01:00`, the file-name form `2026-11-27T06-24-51.496Z`), epoch
    seconds (`1764224691.5`), `now`, and times relative to now: `-10m`, `-90s`, `-2h`, `-1d`,
    `-500ms`, `-1h30m`, `now-5m` (a leading `+` counts forward)."""
    if now is None:
        now = now_ms()
    raw = text
    text = text.strip()
    low = text.lower()
    if low == "now":
        return now
    rel = low[3:].strip() if low.startswith("now") else low
    if rel[:1] in ("-", "+"):
        amount = duration_ms(rel[1:])
        if amount is not None:
            return now - amount if rel[0] == "-" else now + amount
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
    return datetime_ms(when)


def datetime_ms(when: datetime) -> int:
    """An aware datetime (naive means UTC) -> epoch ms."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round((when - _EPOCH) / timedelta(milliseconds=1))


@overload
def to_epoch_ms(value: int | float | str | datetime) -> int: ...


@overload
def to_epoch_ms(value: None) -> None: ...


def to_epoch_ms(value: int | float | str | datetime | None) -> int | None:
    """Epoch ms from epoch ms, a datetime (naive means UTC) or a parse_time string."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return datetime_ms(value)
    if isinstance(value, str):
        return parse_time(value)
    return int(value)


def to_datetime(ms: int) -> datetime:
    """Epoch ms -> an aware UTC datetime, exact to the millisecond."""
    return _EPOCH + timedelta(milliseconds=ms)


def format_time(ms: int) -> str:
    """Epoch ms -> `2026-11-27T06:24:51.496Z`."""
    return to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
