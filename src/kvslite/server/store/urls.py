"""Open the stores a node is configured with, by URL.

- metadata: `sqlite:///path/kvslite.db` (embedded) or `postgresql://user:pw@host:port/db`
- media: `file:///path` (embedded) or `s3://bucket/optional/prefix`, with S3 credentials,
  region and endpoint from the standard AWS configuration (or `s3_endpoint_url`)

The PostgreSQL and S3 modules are imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from kvslite.server.store.blobs import BlobStore


class BadStoreUrl(ValueError):
    """A database or media URL kvslite cannot use."""


def open_metadata_store(url: str):
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from kvslite.server.store.sqlite import SqliteMetadataStore

        return SqliteMetadataStore(_local_path(url))
    if scheme in ("postgresql", "postgres"):
        from kvslite.server.store.postgres import PostgresMetadataStore

        return PostgresMetadataStore(url)
    raise BadStoreUrl(f"--database-url must be sqlite:///path or postgresql://..., got {url!r}")


def open_blob_store(url: str, *, s3_endpoint_url: str | None = None) -> BlobStore:
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from kvslite.server.store.files import FileBlobStore

        return FileBlobStore(_local_path(url))
    if scheme == "s3":
        from kvslite.server.store.s3 import S3BlobStore

        return S3BlobStore(url, endpoint_url=s3_endpoint_url)
    raise BadStoreUrl(f"--media-url must be file:///path or s3://bucket/prefix, got {url!r}")


def is_embedded(url: str) -> bool:
    """Whether a store lives in local files (one process may use it at a time)."""
    return urlsplit(url).scheme in ("sqlite", "file")


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise BadStoreUrl(f"{url!r} names a host; local stores take a path: scheme:///path")
    return Path(unquote(parts.path))
