"""What kvslite keeps about streams, and the interface every metadata store fills.

The SQLite store is the embedded default; a PostgreSQL store fills the same
interface for scale-out. Stores persist records and enforce atomicity (version
compare-and-set, unique names); the rules of the KVS API live in `kvslite.archive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

    def close(self) -> None: ...
