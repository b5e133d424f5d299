"""The blob store contract the archive relies on, proved for every blob store: the
embedded FileBlobStore and S3BlobStore against a real S3-compatible server (SeaweedFS,
started once per session by tests/seaweed_server.py; its tests skip if `weed` is not
installed).

Each test gets a fresh, empty store (a temporary folder; a new bucket) and can open a
second, independent instance on the same place (for S3: another client, configured only
through the environment). The S3 store lists and deletes in pages of PAGE keys here, so
every listing below crosses several pages and every delete_prefix several batches.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from kvslite.server.api_errors import MediaUnavailable, OutOfSpace
from kvslite.server.store.blobs import BlobStore, new_fragment_key, stream_folder
from kvslite.server.store.files import FileBlobStore
from kvslite.server.store.metadata import Stream
from kvslite.server.store.s3 import S3BlobStore, parse_s3_url
from seaweed_server import REGION

PAGE = 4


def new_bucket(server) -> str:
    name = f"kvs-{uuid.uuid4().hex[:16]}"
    server.client().create_bucket(Bucket=name)
    return name


def s3_env(monkeypatch, tmp_path, server, *, endpoint_in_env: bool = False) -> None:
    """Credentials (and perhaps the endpoint) the way a deployment gives them: in the
    environment, with no profile or config file of the machine running the tests."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    if endpoint_in_env:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)


class Backend:
    """A fresh, empty place for blobs: `store` is one instance, `reopen()` another."""

    def __init__(self, kind: str, request, tmp_path: Path, monkeypatch):
        self.kind = kind
        if kind == "files":
            self.root = tmp_path / "media"
            self.store = FileBlobStore(self.root)
        else:
            self.server = request.getfixturevalue("seaweed")
            s3_env(monkeypatch, tmp_path, self.server)
            self.monkeypatch = monkeypatch
            self.url = f"s3://{new_bucket(self.server)}"
            self.store = S3BlobStore(self.url, endpoint_url=self.server.endpoint_url,
                                     page_size=PAGE)

    def reopen(self):
        """An independent instance: for S3 a new client, its endpoint from the environment."""
        if self.kind == "files":
            return FileBlobStore(self.root)
        self.monkeypatch.setenv("AWS_ENDPOINT_URL_S3", self.server.endpoint_url)
        return S3BlobStore(self.url, page_size=PAGE)


@pytest.fixture(params=["files", "s3"])
def backend(request, tmp_path, monkeypatch) -> Backend:
    return Backend(request.param, request, tmp_path, monkeypatch)


def listed(store, seconds: float = 0) -> list[str]:
    return sorted(store.keys_older_than(seconds))


# -- the protocol and the key layout ------------------------------------------------------

PROTOCOL = ["check", "delete", "delete_prefix", "get", "keys_older_than", "list_after", "put",
            "remove_temp_files"]


def test_the_protocol_names_what_the_archive_uses():
    assert sorted(name for name, value in vars(BlobStore).items()
                  if callable(value) and not name.startswith("_")) == PROTOCOL


@pytest.mark.parametrize("store_class", [FileBlobStore, S3BlobStore])
def test_every_store_fills_the_protocol(store_class, tmp_path):
    """Every method of BlobStore, with its parameters (names, kinds, defaults) and types."""
    for name in PROTOCOL:
        assert str(inspect.signature(getattr(store_class, name))) == \
            str(inspect.signature(getattr(BlobStore, name))), name
    store = FileBlobStore(tmp_path) if store_class is FileBlobStore else stubbed_store()[0]
    assert isinstance(store, BlobStore)


def test_blob_keys_are_laid_out_by_stream():
    """A stream's blobs share a folder named by its ARN's creation time and its name, so a
    stream recreated under the same name never shares one; a fragment's key is its
    producer time and a random part."""
    stream = Stream(name="cam.1", arn="arn:aws:kinesisvideo:us-west-2:123:stream/cam.1/"
                    "1700000000123", version="v", creation_time=1_700_000_000.123,
                    data_retention_hours=1, kms_key_id="")
    assert stream_folder(stream) == "streams/1700000000123-cam.1"
    keys = {new_fragment_key(stream, 1_700_000_000_456) for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert re.fullmatch(r"streams/1700000000123-cam\.1/1700000000456-[0-9a-f]{8}\.mkv",
                            key), key


# -- put / get ----------------------------------------------------------------------------

def test_round_trip_small_large_and_empty(backend):
    store = backend.store
    big = os.urandom(8 * 1024 * 1024 + 13)
    blobs = {"streams/s-1/100-aa.mkv": b"cluster bytes", "streams/s-1/200-bb.mkv": big,
             "streams/s-1/300-cc.mkv": b"", "top-level": b"\x00\xff" * 7}
    for key, data in blobs.items():
        assert store.put(key, data) is None
    for key, data in blobs.items():
        assert store.get(key) == data
    assert store.get("streams/s-1/300-cc.mkv", 0, 10) == b""
    assert store.get("streams/s-1/300-cc.mkv", 5) == b""
    assert store.get("streams/s-1/200-bb.mkv", 4 * 1024 * 1024, 1024 * 1024) == \
        big[4 * 1024 * 1024:5 * 1024 * 1024]
    assert listed(store) == sorted(blobs)


def test_ranged_get(backend):
    store = backend.store
    data = bytes(range(256)) * 40  # 10240 bytes
    store.put("streams/s/f.mkv", data)
    n = len(data)
    cases = [(0, None), (0, 10), (1, 1), (100, 50), (5, 0), (n - 10, 100), (n - 1, None),
             (n, None), (n, 5), (n + 1000, 1), (n + 1000, None), (0, n), (0, n + 1),
             (0, 10**9), (777, None)]
    for offset, length in cases:
        want = data[offset:] if length is None else data[offset:offset + length]
        assert store.get("streams/s/f.mkv", offset, length) == want, (offset, length)
    assert store.get("streams/s/f.mkv", length=3) == data[:3]
    with pytest.raises((ValueError, OSError)):  # the file store: EINVAL from seek
        store.get("streams/s/f.mkv", -1)


def test_get_missing_key_raises_file_not_found(backend):
    store = backend.store
    store.put("streams/s/present.mkv", b"x")
    for offset, length in [(0, None), (0, 10), (5, None), (0, 0)]:
        with pytest.raises(FileNotFoundError):
            store.get("streams/s/absent.mkv", offset, length)
        with pytest.raises(FileNotFoundError):
            store.get("streams/never/absent.mkv", offset, length)


def test_overwrite_replaces_whole_blob(backend):
    store = backend.store
    store.put("streams/s/k.mkv", b"a much longer first version")
    store.put("streams/s/k.mkv", b"short")
    assert store.get("streams/s/k.mkv") == b"short"
    assert store.get("streams/s/k.mkv", 2) == b"ort"
    assert listed(store) == ["streams/s/k.mkv"]


def test_keys_may_not_leave_the_store(backend):
    for key in ["../escape", "/absolute", "streams/../../escape", ""]:
        with pytest.raises(ValueError):
            backend.store.put(key, b"x")
        with pytest.raises(ValueError):
            backend.store.get(key)
    assert listed(backend.store) == []


# -- deleting -----------------------------------------------------------------------------

def test_delete_one_blob_missing_is_fine(backend):
    store = backend.store
    store.put("streams/s/a.mkv", b"a")
    store.put("streams/s/b.mkv", b"b")
    store.delete("streams/s/a.mkv")
    with pytest.raises(FileNotFoundError):
        store.get("streams/s/a.mkv")
    store.delete("streams/s/a.mkv")  # again: already gone
    store.delete("streams/nothing/here.mkv")
    store.delete("streams/s/b.mkv", prune=True)
    store.delete("streams/s/b.mkv", prune=True)
    assert listed(store) == []
    store.put("streams/s/c.mkv", b"c")  # the folder works again after a prune
    assert store.get("streams/s/c.mkv") == b"c"


def test_delete_prefix_removes_exactly_that_folder(backend):
    store = backend.store
    doomed = [f"streams/a-1/{i:03d}-x.mkv" for i in range(11)] + ["streams/a-1/sub/deep.mkv"]
    kept = ["streams/a-10/000-x.mkv", "streams/a-10/001-x.mkv", "streams/a-1.mkv",
            "streams/a-1x/000-x.mkv", "streams/b/a-1/000-x.mkv", "other/a-1/000-x.mkv",
            "streams/a-0/000-x.mkv"]
    for key in doomed + kept:
        store.put(key, key.encode())
    store.delete_prefix("streams/a-1")
    assert listed(store) == sorted(kept)
    for key in kept:
        assert store.get(key) == key.encode()
    for key in doomed:
        with pytest.raises(FileNotFoundError):
            store.get(key)
    store.delete_prefix("streams/a-1")  # already gone
    store.delete_prefix("streams/never-was")
    store.delete_prefix("streams/a-10/")  # a trailing slash names the same folder
    assert listed(store) == sorted(set(kept) - {"streams/a-10/000-x.mkv",
                                                "streams/a-10/001-x.mkv"})
    with pytest.raises(ValueError):
        store.delete_prefix("")  # never the whole store


# -- listing and housekeeping -------------------------------------------------------------

def test_keys_older_than(backend):
    store = backend.store
    keys = ["streams/arn-1700000000000-cam/1700000000123-0a1b2c3d.mkv",
            "streams/arn-1700000000000-cam/1700000000456-deadbeef.mkv",
            "streams/arn-1700000000001-cam.2/x_y-z.mkv", "streams/z/deeper/still/f",
            "lonely"]
    for key in keys:
        store.put(key, b"data")
    assert listed(store, 0) == sorted(keys)
    assert listed(store, -1) == sorted(keys)
    assert listed(store, float("-inf")) == sorted(keys)
    assert listed(store, 3600) == []
    assert listed(store, 10 * 365 * 86400) == []


def walk(store, limit: int, after: str = "") -> list[tuple[str, float]]:
    """Every page of a listing, each resuming after the last key of the one before."""
    seen = []
    while page := store.list_after(after, limit):
        assert 1 <= len(page) <= limit
        seen += page
        after = page[-1][0]
    return seen


LISTED = ["a.mkv", "a/b.mkv", "a/c/d.mkv", "a/c0", "a-b/x", "a0.mkv", "lonely",
          "streams/s-1/100-aa.mkv", "streams/s-1/200-bb.mkv", "streams/s-10/1.mkv",
          "streams/s-2/9.mkv", "streams/z/deeper/still/f"]


def test_list_after_pages_through_every_key_once_from_any_listed_key(backend):
    """A listing in pages of any size sees every key once, each with when it was written,
    in the store's order (files: keys as strings; S3: the server's, which for SeaweedFS
    is folder by folder), and resumes after any key it listed, even one deleted since."""
    store = backend.store
    before = time.time()
    for key in LISTED:
        store.put(key, b"x")
    order = [key for key, _ in walk(store, 1000)]
    assert sorted(order) == sorted(LISTED) and len(order) == len(LISTED)
    if backend.kind == "files":
        assert order == sorted(LISTED)
    for limit in (1, 2, 3, 5):
        seen = walk(store, limit)
        assert [key for key, _ in seen] == order, limit
        assert all(before - 5 < written < time.time() + 5 for _, written in seen)
    for i, key in enumerate(order):
        assert [k for k, _ in store.list_after(key, 3)] == order[i + 1:i + 4], key
    for i in (2, 6, 9):  # a cursor whose blob went meanwhile (an orphan just removed)
        store.delete(order[i], prune=True)
        assert [k for k, _ in store.list_after(order[i], 2)] == order[i + 1:i + 3], order[i]
    assert store.list_after(order[-1], 10) == []


def test_no_temp_files_and_empty_dirs_are_harmless(backend):
    store = backend.store
    store.put("streams/s/a.mkv", b"a")
    store.put("streams/t/b.mkv", b"b")
    store.delete("streams/t/b.mkv")
    assert store.remove_temp_files() == []
    assert listed(store) == ["streams/s/a.mkv"]
    assert store.get("streams/s/a.mkv") == b"a"


# -- concurrency and independent instances ------------------------------------------------

def test_parallel_puts_and_ranged_gets(backend):
    """8 threads write 6 blobs each, then all read random ranges of every blob, at once."""
    store = backend.store
    threads, per_thread = 8, 6
    rng = random.Random(1234)
    blobs = {f"streams/t{t}/{i:02d}-{t}.mkv": rng.randbytes(rng.randrange(1, 300_000))
             for t in range(threads) for i in range(per_thread)}
    by_thread = [[k for k in blobs if k.startswith(f"streams/t{t}/")] for t in range(threads)]
    barrier = threading.Barrier(threads)

    def work(t: int) -> int:
        barrier.wait()
        for key in by_thread[t]:
            store.put(key, blobs[key])
        barrier.wait()  # everything written: now read everything, everyone at once
        local = random.Random(t)
        checked = 0
        for key in local.sample(sorted(blobs), len(blobs)):
            data = blobs[key]
            offset = local.randrange(0, len(data) + 10)
            length = local.choice([None, 0, 1, local.randrange(1, 100_000)])
            want = data[offset:] if length is None else data[offset:offset + length]
            assert store.get(key, offset, length) == want, (key, offset, length)
            checked += 1
        return checked

    with ThreadPoolExecutor(threads) as pool:
        assert sum(pool.map(work, range(threads))) == threads * len(blobs)
    assert listed(store) == sorted(blobs)
    assert listed(backend.reopen()) == sorted(blobs)


def test_acknowledged_put_is_seen_by_another_instance(backend):
    writer, reader = backend.store, backend.reopen()
    data = os.urandom(200_000)
    writer.put("streams/s/acked.mkv", data)
    assert reader.get("streams/s/acked.mkv") == data
    assert reader.get("streams/s/acked.mkv", 1000, 10) == data[1000:1010]
    assert listed(reader) == ["streams/s/acked.mkv"]
    writer.put("streams/s/acked.mkv", b"v2")
    assert reader.get("streams/s/acked.mkv") == b"v2"
    reader.delete("streams/s/acked.mkv")
    with pytest.raises(FileNotFoundError):
        writer.get("streams/s/acked.mkv")


# -- S3 only ------------------------------------------------------------------------------

def test_s3_prefix_keeps_every_object_under_it(seaweed, tmp_path, monkeypatch):
    s3_env(monkeypatch, tmp_path, seaweed)
    admin = seaweed.client()
    bucket = new_bucket(seaweed)
    outside = ["some/prefix2/streams/x/1.mkv", "some/other.mkv", "streams/x/1.mkv",
               "some/prefix"]
    for key in outside:
        admin.put_object(Bucket=bucket, Key=key, Body=b"not ours")
    store = S3BlobStore(f"s3://{bucket}/some/prefix", endpoint_url=seaweed.endpoint_url,
                        page_size=PAGE)
    assert store.prefix == "some/prefix/"
    keys = [f"streams/x/{i}.mkv" for i in range(6)] + ["streams/y/1.mkv", "top"]
    for key in keys:
        store.put(key, key.encode())
    in_bucket = sorted(o["Key"] for page in admin.get_paginator("list_objects_v2")
                       .paginate(Bucket=bucket) for o in page.get("Contents", []))
    assert in_bucket == sorted(outside + [f"some/prefix/{k}" for k in keys])
    assert listed(store) == sorted(keys)
    assert store.get("streams/x/1.mkv") == b"streams/x/1.mkv"
    with pytest.raises(FileNotFoundError):
        store.get("other.mkv")  # exists as some/other.mkv, outside the prefix

    same = S3BlobStore(f"s3://{bucket}/some/prefix/", endpoint_url=seaweed.endpoint_url)
    assert listed(same) == sorted(keys)
    store.delete_prefix("streams/x")
    assert listed(same) == ["streams/y/1.mkv", "top"]
    for key in outside:  # "streams/x" under the prefix only, not the bucket's own
        assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == b"not ours"


def test_s3_missing_bucket_fails_clearly_at_construction(seaweed, tmp_path, monkeypatch):
    s3_env(monkeypatch, tmp_path, seaweed)
    name = f"kvs-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FileNotFoundError, match=name):
        S3BlobStore(f"s3://{name}/media", endpoint_url=seaweed.endpoint_url)


def test_s3_wrong_credentials_fail_at_construction(seaweed, tmp_path, monkeypatch):
    s3_env(monkeypatch, tmp_path, seaweed)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(PermissionError, match="not accessible"):
        S3BlobStore(f"s3://{new_bucket(seaweed)}", endpoint_url=seaweed.endpoint_url)


def test_s3_lists_and_deletes_page_by_page(seaweed, tmp_path, monkeypatch):
    """Listing follows continuation tokens; delete_prefix sends one DeleteObjects a page."""
    s3_env(monkeypatch, tmp_path, seaweed)
    store = S3BlobStore(f"s3://{new_bucket(seaweed)}", endpoint_url=seaweed.endpoint_url,
                        page_size=PAGE)
    calls: list[str] = []
    store.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.append(model.name))
    keys = [f"streams/s/{i:03d}.mkv" for i in range(3 * PAGE + 1)]
    for key in keys:
        store.put(key, b"x")
    calls.clear()
    assert listed(store) == keys
    assert calls == ["ListObjectsV2"] * 4
    calls.clear()
    store.delete_prefix("streams/s")
    assert calls.count("DeleteObjects") == 4
    assert listed(store) == []


@pytest.mark.parametrize("url", ["http://bucket/x", "s3://", "s3:///prefix", "bucket/x",
                                 "s3://bucket/a//b", "s3://bucket/a/../b", "s3://b/x?y=1"])
def test_s3_url_must_name_a_bucket(url):
    with pytest.raises(ValueError):
        parse_s3_url(url)


def test_s3_url_parsing():
    assert parse_s3_url("s3://media") == ("media", "")
    assert parse_s3_url("s3://media/") == ("media", "")
    assert parse_s3_url("s3://media/kvs/prod") == ("media", "kvs/prod/")
    assert parse_s3_url("s3://media/kvs/prod/") == ("media", "kvs/prod/")


def stubbed_store(prefix: str = "") -> tuple[S3BlobStore, Stubber]:
    client = boto3.client("s3", region_name=REGION, aws_access_key_id="k",
                          aws_secret_access_key="s")
    stubber = Stubber(client)
    stubber.add_response("head_bucket", {}, {"Bucket": "media"})
    stubber.activate()
    return S3BlobStore(f"s3://media{prefix}", client=client), stubber


@pytest.mark.parametrize("code, status", [("InsufficientStorage", 507),
                                          ("XMinioStorageFull", 507),
                                          ("SomethingNew", 507),
                                          ("QuotaExceeded", 403)])
def test_s3_full_storage_is_out_of_space(code, status):
    store, stubber = stubbed_store()
    stubber.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with pytest.raises(OutOfSpace) as caught:
        store.put("streams/s/f.mkv", b"data")
    assert caught.value.status == 507
    stubber.assert_no_pending_responses()


def test_s3_server_errors_are_media_unavailable_and_others_propagate():
    store, stubber = stubbed_store()
    stubber.add_client_error("put_object", service_error_code="InternalError",
                             http_status_code=500)
    stubber.add_client_error("get_object", service_error_code="AccessDenied",
                             http_status_code=403)
    with pytest.raises(MediaUnavailable) as put_error:  # S3 failing: retry later (503)
        store.put("streams/s/f.mkv", b"data")
    assert put_error.value.status == 503
    assert "s3://media" not in put_error.value.message  # the bucket stays in the log
    assert isinstance(put_error.value.__cause__, ClientError)
    with pytest.raises(ClientError):  # a refusal is about the request: as it is
        store.get("streams/s/f.mkv")
