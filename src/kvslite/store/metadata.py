"""What kvslite keeps about streams, and the interface every metadata store fills.

The SQLite store is the embedded default; a PostgreSQL store fills the same
interface for scale-out. Stores persist records and enforce atomicity (version
compare-and-set, unique names); the rules of the KVS API live in `kvslite.archive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class Clock(Enum):
    """Which clock a fragment time is read on; values are the API's selector names."""

    PRODUCER = "PRODUCER_TIMESTAMP"  # the producer's timestamps (cluster timecodes)
    SERVER = "SERVER_TIMESTAMP"  # when kvslite received the fragment's first byte


@dataclass(frozen=True)
class Stream:
    name: str
    arn: str
    version: str
    creation_time: float  # epoch seconds
    data_retention_hours: int
    kms_key_id: str
    status: str = "ACTIVE"
    device_name: str | None = None
    media_type: str | None = None


@dataclass(frozen=True)
class Fragment:
    """One archived fragment: a Matroska cluster that starts with a keyframe."""

    arn: str  # the stream's
    seq: int  # 1, 2, 3... within the stream, in arrival order
    number: str  # the KVS FragmentNumber, derived from seq (see fragment_number)
    producer_ms: int  # fragment start on the producer's clock, epoch ms
    server_ms: int  # when kvslite started receiving it, epoch ms
    duration_ms: int
    size: int  # bytes of the stored cluster
    header_id: int  # the EBML header + Tracks it was produced with
    blob_key: str
    frames: bytes  # packed frame index, see kvslite.archive.fragments

    def start_ms(self, clock: Clock) -> int:
        """Where the fragment starts on `clock`, epoch ms."""
        return self.producer_ms if clock is Clock.PRODUCER else self.server_ms


def fragment_number(seq: int) -> str:
    """A 47-digit decimal string, like AWS's, that sorts and compares like `seq`."""
    return f"9{seq:046d}"


def seq_of(number: str) -> int | None:
    if len(number) != 47 or not number.isdigit() or number[0] != "9":
        return None
    return int(number[1:])


class NameTaken(Exception):
    """A stream with this name already exists."""


class MetadataStore(Protocol):
    def create_stream(self, stream: Stream, tags: dict[str, str]) -> None:
        """Insert a stream with its tags atomically; raise NameTaken on a duplicate name."""

    def get_stream(self, *, name: str | None = None, arn: str | None = None) -> Stream | None: ...

    def list_streams(self, *, prefix: str, after: str, limit: int) -> list[Stream]:
        """Streams whose name starts with `prefix` and sorts after `after`, by name."""

    def update_stream(self, arn: str, expected_version: str, **changes) -> bool:
        """Apply `changes` (which include the new version) if the version still matches."""

    def delete_stream(self, arn: str, expected_version: str | None) -> bool:
        """Delete a stream and its tags; False if it is gone or the version moved on."""

    def get_tags(self, arn: str) -> dict[str, str]: ...

    def put_tags(self, arn: str, tags: dict[str, str], max_tags: int) -> bool:
        """Add or overwrite tags; False (and nothing changed) if the total would exceed max_tags."""

    def delete_tags(self, arn: str, keys: list[str]) -> None: ...

    # -- fragments -------------------------------------------------------------------

    def save_header(self, arn: str, data: bytes) -> int:
        """Keep a stream header (EBML + Info + Tracks); reuse the latest if identical."""

    def get_header(self, header_id: int) -> bytes: ...

    def add_fragment(self, **fields) -> Fragment:
        """Commit a fragment, assigning the stream's next seq and its number."""

    def find_fragment(self, arn: str, *, producer_ms: int) -> Fragment | None: ...

    def list_fragments(self, arn: str, *, clock: Clock | None = None, start_ms: int = 0,
                       end_ms: int = 0, after_seq: int = 0, limit: int) -> list[Fragment]:
        """Fragments by seq; with a clock, only those starting in [start_ms, end_ms] on it."""

    def fragments_by_number(self, arn: str, numbers: list[str]) -> dict[str, Fragment]: ...

    def latest_fragment(self, arn: str) -> Fragment | None: ...

    def fragment_at(self, arn: str, clock: Clock, ms: int) -> Fragment | None:
        """The fragment whose span holds `ms` on that clock, else the first starting after."""

    def fragments_overlapping(self, arn: str, clock: Clock, start_ms: int, end_ms: int,
                              max_duration_ms: int) -> list[Fragment]:
        """Fragments whose span [start, start + duration) meets [start_ms, end_ms]."""

    def secret(self, name: str) -> bytes:
        """A random server secret, created on first use and shared by every node."""

    def close(self) -> None: ...
