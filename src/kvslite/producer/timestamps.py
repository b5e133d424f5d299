"""Producer timestamps: epoch milliseconds, as KVS ABSOLUTE fragment timecodes are.

The same times the image fetcher reads (kvslite.clients): ISO 8601, epoch seconds, now,
or relative to now."""

from __future__ import annotations

from kvslite.clients import format_time as format_timestamp
from kvslite.clients import now_ms, to_epoch_ms
from kvslite.clients import parse_time as parse_timestamp

__all__ = ["format_timestamp", "now_ms", "parse_timestamp", "to_epoch_ms"]
