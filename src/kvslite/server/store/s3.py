"""Media blobs in an S3 bucket (AWS or any S3-compatible server: SeaweedFS, MinIO, ...).

The BlobStore contract (store/blobs.py), as the file store fills it: slash-separated keys
are object keys (under an optional prefix from the URL), a missing object reads as
`FileNotFoundError`, and a `put` is durable when it returns, i.e. once PutObject has
succeeded. S3 unreachable or failing (5xx) is `MediaUnavailable`, which clients see as a
503 (PutMedia as ERROR 5001) without the bucket's name. S3 writes are atomic, so a crash
leaves no temporary files, and there are no folders to prune.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kvslite.server.api_errors import MediaUnavailable, OutOfSpace

# Answers meaning the storage behind the bucket is full (or over quota): HTTP 507 from any
# server, MinIO's XMinioStorageFull, Ceph RGW's QuotaExceeded. SeaweedFS says only
# "500 InternalError" when its volumes are full, which cannot be told apart from other
# failures, so that one is MediaUnavailable like any failure of the server.
_FULL_CODES = frozenset({"InsufficientStorage", "XMinioStorageFull", "StorageFull",
                         "QuotaExceeded", "NoSpaceLeft"})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# 4xx answers that a later attempt may not get: throttling, timeouts, clock skew
_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException",
                              "TooManyRequests", "RequestLimitExceeded", "RequestTimeout",
                              "RequestTimeTooSkewed", "RequestThrottled"})
MAX_DELETE_BATCH = 1000  # the most keys one DeleteObjects may name
# keys per ListObjectsV2 request in list_after: boto3 holds ~2 KB per listed key while it
# parses a response, so a page of 1000 keys is asked for in a few smaller ones
LIST_AFTER_REQUEST = 250
PROBE_TIMEOUT_S = 1.0  # a readiness probe's connect and read timeouts: one attempt each


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` -> (bucket, prefix), the prefix empty or ending in "/"."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an S3 location (want s3://bucket/optional/prefix): {url!r}")
    prefix = parts.path.strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise ValueError(f"S3 prefix has an empty, '.' or '..' segment: {url!r}")
    return parts.netloc, f"{prefix}/" if prefix else ""


def make_client(endpoint_url: str | None = None, *, max_pool_connections: int = 32,
                retries: int = 5, timeout_s: float | None = None):
    """An S3 client from boto3's standard configuration (environment, profiles,
    AWS_ENDPOINT_URL_S3, ...); `endpoint_url` overrides it for an S3-compatible server.

    A custom endpoint (given, or from AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL) is addressed
    path-style (http://host/bucket/key), which every S3-compatible server understands;
    AWS itself keeps botocore's default (virtual-hosted) unless a profile says otherwise.
    `retries` is the attempts a call gets; `timeout_s`, when given, bounds connect and read.
    """
    custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"mode": "standard", "max_attempts": retries},
        max_pool_connections=max_pool_connections,  # parallel ranged reads share the pool
        connect_timeout=timeout_s or 10,
        read_timeout=timeout_s or 60,
        tcp_keepalive=True,
        **({"s3": {"addressing_style": "path"}} if custom else {}),
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def permanent_failure(e: Exception) -> str | None:
    """Why S3 will refuse a request however often it is repeated (a 4xx other than
    throttling or a timeout: NoSuchBucket, AccessDenied...), else None."""
    if not isinstance(e, ClientError):
        return None
    status = _status(e) or 0
    if not 400 <= status < 500 or status in (408, 429) or _code(e) in _TRANSIENT_CODES:
        return None
    return f"{_code(e) or status} ({e.response.get('Error', {}).get('Message', '')})"


def _is_full(e: ClientError) -> bool:
    return _status(e) == 507 or _code(e) in _FULL_CODES


def _is_missing(e: ClientError) -> bool:
    return _code(e) in _MISSING_CODES


@contextmanager
def _unavailable_as_error(what: str):
    """S3 unreachable (no connection, timeouts) or failing (5xx) as MediaUnavailable;
    answers about the request itself (a missing key, a full store) pass unchanged."""
    try:
        yield
    except BotoCoreError as e:
        raise MediaUnavailable(f"{what}: {e}") from e
    except ClientError as e:
        status = _status(e) or 0
        if status >= 500 and not _is_full(e):
            raise MediaUnavailable(f"{what}: {e}") from e
        raise


class S3BlobStore:
    """Blobs as objects in `s3://bucket/optional/prefix`, addressed by slash-separated
    keys (kept as given, below the prefix). Thread-safe: one boto3 client, shared."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, client=None,
                 page_size: int = 1000):
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client if client is not None else make_client(endpoint_url)
        self._endpoint_url = endpoint_url
        self._probe_client: Any | None = None  # one quick attempt, for readiness probes
        if not 1 <= page_size <= MAX_DELETE_BATCH:
            raise ValueError(f"page_size must be 1..{MAX_DELETE_BATCH}: {page_size}")
        self.page_size = page_size  # keys per ListObjectsV2 page (and DeleteObjects batch)
        self._check_bucket()

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r})"

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            status, code = _status(e), _code(e)
            if status == 404 or code in ("NoSuchBucket", "404", "NotFound"):
                raise FileNotFoundError(f"S3 bucket {self.bucket!r} does not exist "
                                        f"(for {self.url}); create it first") from None
            if status == 403 or code in ("403", "AccessDenied", "Forbidden"):
                raise PermissionError(f"S3 bucket {self.bucket!r} is not accessible with "
                                      f"these credentials (for {self.url})") from None
            raise

    def _object_key(self, key: str) -> str:
        if not key or key.startswith("/") or any(
                seg in ("", ".", "..") for seg in key.split("/")):
            raise ValueError(f"bad blob key: {key!r}")
        return self.prefix + key

    # -- writing -----------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (replacing it); durable once this returns."""
        obj = self._object_key(key)
        try:
            with _unavailable_as_error(f"writing {key} to {self.url}"):
                self.client.put_object(Bucket=self.bucket, Key=obj, Body=bytes(data))
        except ClientError as e:
            if _is_full(e):
                raise OutOfSpace(f"writing {key} to {self.url}: {e}") from e
            raise

    def delete(self, key: str, *, prune: bool = False) -> None:
        """Remove a blob; a missing one is fine. S3 has no folders, so nothing to prune."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as e:
            if not _is_missing(e):
                raise

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob in the folder `prefix` ("streams/x" means "streams/x/...",
        never "streams/x2/..."), a page of keys per DeleteObjects."""
        folder = self._object_key(prefix.rstrip("/")) + "/"
        for page in self._pages(folder):
            keys = [item["Key"] for item in page]
            if not keys:
                continue
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            failed = [err for err in response.get("Errors", [])
                      if err.get("Code") not in _MISSING_CODES]
            if failed:
                first = failed[0]
                raise OSError(errno.EIO, f"deleting {len(failed)} of {len(keys)} objects "
                              f"under s3://{self.bucket}/{folder} failed, e.g. "
                              f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    # -- reading -----------------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The blob's bytes from `offset`, at most `length` of them (all when None); past
        the end reads as b"". Raises FileNotFoundError if there is no such blob."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"negative offset or length: {offset}, {length}")
        obj = self._object_key(key)
        args = {"Bucket": self.bucket, "Key": obj}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        what = f"reading {key} from {self.url}"
        try:
            with _unavailable_as_error(what):
                if length == 0:  # no Range can ask for nothing: just check it is there
                    self.client.head_object(Bucket=self.bucket, Key=obj)
                    return b""
                response = self.client.get_object(**args)
        except ClientError as e:
            if _is_missing(e):
                raise FileNotFoundError(errno.ENOENT, f"no blob {key} in {self.url}",
                                        key) from None
            if _status(e) == 416 or _code(e) == "InvalidRange":
                return b""  # offset at or past the end (or an empty object)
            raise
        with _unavailable_as_error(what), response["Body"] as body:
            data = body.read()
        if "Range" in args and not response.get("ContentRange"):
            # a server that ignored the Range sent the whole object: cut it here
            data = data[offset:] if length is None else data[offset:offset + length]
        return data

    def check(self) -> None:
        """Raise MediaUnavailable unless the bucket answers at once (one quick attempt: a
        readiness probe must not wait out the retries a fragment write gets)."""
        if self._probe_client is None:
            self._probe_client = make_client(self._endpoint_url, max_pool_connections=2,
                                             retries=1, timeout_s=PROBE_TIMEOUT_S)
        with _unavailable_as_error(f"checking {self.url}"):
            self._probe_client.head_bucket(Bucket=self.bucket)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Keys of blobs last written more than `seconds` ago (by the server's clock)."""
        cutoff = time.time() - seconds
        for page in self._pages(self.prefix):
            for item in page:
                name = item["Key"][len(self.prefix):]
                if not name or name.endswith("/"):
                    continue  # a "folder" marker some tools make: not a blob
                if item["LastModified"].timestamp() < cutoff:
                    yield name

    def list_after(self, after: str, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` blobs whose keys sort after `after`, in key order, each with when it
        was last written (epoch seconds, the server's clock): ListObjectsV2 from StartAfter,
        so a listing resumes anywhere without walking what comes before. A page is asked for
        in requests of at most LIST_AFTER_REQUEST keys, which bounds the memory it takes."""
        args = {"Bucket": self.bucket, "Prefix": self.prefix}
        if after:
            args["StartAfter"] = self._object_key(after)
        page: list[tuple[str, float]] = []
        while len(page) < limit:
            response = self.client.list_objects_v2(
                **args, MaxKeys=min(self.page_size, LIST_AFTER_REQUEST, limit - len(page)))
            for item in response.get("Contents", []):
                name = item["Key"][len(self.prefix):]
                if name and not name.endswith("/"):  # a "folder" marker is not a blob
                    page.append((name, item["LastModified"].timestamp()))
            if not response.get("IsTruncated"):
                break
            args["ContinuationToken"] = response["NextContinuationToken"]
        return page[:limit]

    def _pages(self, prefix: str) -> Iterator[list[dict]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                       PaginationConfig={"PageSize": self.page_size}):
            yield page.get("Contents", [])

    def remove_temp_files(self) -> list[str]:
        """Nothing to remove: a PutObject interrupted by a crash leaves no object."""
        return []
