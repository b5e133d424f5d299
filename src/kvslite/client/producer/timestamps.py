"""Producer timestamps: epoch milliseconds, as KVS ABSOLUTE fragment timecodes are.

The same times the image fetcher reads (kvslite.client.common): ISO 8601, epoch seconds, now,
or relative to now."""

from __future__ import annotations

from kvslite.client.common import format_time as format_timestamp
from kvslite.client.common import now_ms, to_epoch_ms
from kvslite.client.common import parse_time as parse_timestamp

__all__ = ["format_timestamp", "now_ms", "parse_timestamp", "to_epoch_ms"]
