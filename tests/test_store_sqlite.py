"""The SQLite metadata store: migrations, atomic compare-and-set, tag limits."""

from __future__ import annotations

import sqlite3

import pytest

from kvslite.server.store.metadata import NameTaken, Stream
from kvslite.server.store.sqlite import SqliteMetadataStore
from kvslite.server.store.sqlite_schema import MIGRATIONS


def make_stream(name="s", version="v1") -> Stream:
    return Stream(name=name, arn=f"arn:aws:kinesisvideo:r:1:stream/{name}/1", version=version,
                  creation_time=1.0, data_retention_hours=1, kms_key_id="k")


def test_migrates_once_and_reopens(tmp_path):
    store = SqliteMetadataStore(tmp_path / "m.db")
    store.create_stream(make_stream(), {"a": "b"})
    store.close()
    store = SqliteMetadataStore(tmp_path / "m.db")
    assert store.get_stream(name="s") == make_stream()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refuses_a_newer_schema(tmp_path):
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this kvslite"):
        SqliteMetadataStore(tmp_path / "m.db")


def test_duplicate_name(tmp_path):
    store = SqliteMetadataStore(tmp_path / "m.db")
    store.create_stream(make_stream(), {})
    with pytest.raises(NameTaken):
        store.create_stream(make_stream(), {})


def test_update_is_compare_and_set(tmp_path):
    store = SqliteMetadataStore(tmp_path / "m.db")
    stream = make_stream()
    store.create_stream(stream, {})
    assert store.update_stream(stream.arn, "v1", version="v2", media_type="video/h264")
    assert not store.update_stream(stream.arn, "v1", version="v3")
    assert store.get_stream(arn=stream.arn).version == "v2"
    assert not store.mark_deleting(stream.arn, "v1")
    assert store.mark_deleting(stream.arn, "v2")
    assert not store.mark_deleting(stream.arn, "v2")  # already being deleted
    assert not store.update_stream(stream.arn, "v2", version="v4")  # nor changed any more


def test_tag_limit_is_all_or_nothing(tmp_path):
    store = SqliteMetadataStore(tmp_path / "m.db")
    stream = make_stream()
    store.create_stream(stream, {"a": "1"})
    assert not store.put_tags(stream.arn, {"b": "2", "c": "3"}, max_tags=2)
    assert store.get_tags(stream.arn) == {"a": "1"}
    assert store.put_tags(stream.arn, {"a": "9", "b": "2"}, max_tags=2)
    assert store.get_tags(stream.arn) == {"a": "9", "b": "2"}


def test_deleting_a_stream_drops_its_tags(tmp_path):
    store = SqliteMetadataStore(tmp_path / "m.db")
    stream = make_stream()
    store.create_stream(stream, {"a": "1"})
    store.mark_deleting(stream.arn, None)
    store.purge_stream(stream.arn)
    store.create_stream(stream, {})
    assert store.get_tags(stream.arn) == {}
