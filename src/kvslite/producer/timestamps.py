"""Producer timestamps: epoch milliseconds, as KVS ABSOLUTE fragment timecodes are."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def now_ms() -> int:
    return round(time.time() * 1000)


def format_timestamp(ms: int) -> str:
    """Epoch ms -> ISO 8601 UTC with milliseconds, e.g. 2023-11-14T22:13:20.000Z."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_timestamp(text: str) -> int:
    """ISO 8601 (a missing zone means UTC) or epoch seconds (fractions allowed) -> epoch ms."""
    text = text.strip()
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or epoch seconds: {text!r}") from None
    return _datetime_ms(when)


def to_epoch_ms(value: int | float | str | datetime | None) -> int | None:
    """Epoch ms from epoch ms, a datetime (naive means UTC) or a parse_timestamp string."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return _datetime_ms(value)
    if isinstance(value, str):
        return parse_timestamp(value)
    return int(value)


def _datetime_ms(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round(when.timestamp() * 1000)
