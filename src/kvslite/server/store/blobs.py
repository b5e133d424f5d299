"""Media blobs: the contract every blob store fills, and where each fragment's blob goes.

The file store (store/files.py) is the embedded default; the S3 store (store/s3.py) fills
the same contract for scale-out. Keys are slash-separated paths ("streams/<stream>/<blob>");
the layout below is the stores' business, so the archive names no folder itself.
tests/test_blob_store_contract.py proves each guarantee, for every store.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from kvslite.server.store.metadata import Stream


def stream_folder(stream: Stream) -> str:
    """The folder holding a stream's blobs; the creation time in its ARN keeps a stream
    apart from an earlier one of the same name (deleted, its media perhaps still there)."""
    return f"streams/{stream.arn.rsplit('/', 1)[1]}-{stream.name}"


def new_fragment_key(stream: Stream, producer_ms: int) -> str:
    """A fresh key for one of the stream's fragments: named by its producer time, with a
    random part so a resend or a racing writer never overwrites a stored blob."""
    return f"{stream_folder(stream)}/{producer_ms}-{secrets.token_hex(4)}.mkv"


@runtime_checkable
class BlobStore(Protocol):
    """Where media lives. The guarantees:

    - `put` is durable and whole once it returns: a crash leaves the old blob or the new
      one, never a part. A full store raises OutOfSpace; a store that cannot be reached
      (S3 down) raises MediaUnavailable.
    - A missing blob reads as FileNotFoundError.
    - Listings are in an order that stays the same from one listing to the next, so a
      listing resumes after any key it gave, even one deleted since.
    - Several instances may share one place (nodes sharing a bucket): what one `put`s,
      the others read.
    """

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any blob there. In a store with folders, a
        delete_prefix of the key's folder racing the write may fail it with
        FileNotFoundError."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The blob's bytes from `offset`, at most `length` of them (all when None); past
        the end reads as b""."""

    def delete(self, key: str, *, prune: bool = False) -> None:
        """Remove a blob; a missing one is fine. With `prune`, the key's folder goes too if
        this left it empty (a store without folders, S3, has nothing more to do)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob in the folder `prefix` ("streams/x" means "streams/x/...",
        never "streams/x2/..."); an empty prefix is a ValueError, never the whole store."""

    def list_after(self, after: str, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` keys sorting after `after` (in the store's order), each with when
        it was last written (epoch seconds, by the store's clock). Memory is bounded by
        `limit`, however many blobs there are. Leftovers of interrupted writes are listed
        too: no fragment refers to them."""

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Every key last written more than `seconds` ago (by the store's clock)."""

    def remove_temp_files(self) -> list[str]:
        """Remove what writes interrupted by a crash left behind, and return their keys;
        call only when no write can be in flight (at start, holding the data directory).
        A store whose writes are atomic (S3) never has any: it returns []."""

    def check(self) -> None:
        """Raise unless the store answers at once (a readiness probe)."""
