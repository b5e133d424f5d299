"""Live readers are woken when a fragment is committed, not by polling: on SQLite by the
store's own commit, on PostgreSQL by NOTIFY from whichever instance (node) committed it,
and after the listening connection is cut, by its reconnection.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest
from store_contract_workers import (PostgresStores, SqliteStores, digest_of, fragment_fields,
                                    make_stream)

from kvslite.server.store.new_fragments import NewFragments

pytestmark = pytest.mark.slow  # two nodes on PostgreSQL

PATIENCE_S = 30.0  # a waiter's timeout: far longer than any wake-up should take


def new_stream(store, name: str = "cam", serial: int = 1):
    stream = make_stream(name, serial)
    store.create_stream(stream, {})
    return stream, store.save_header(stream.arn, b"header")


def add(store, arn: str, header_id: int, producer_ms: int) -> None:
    store.add_fragment(**fragment_fields(arn, header_id, producer_ms,
                                         digest_of(str(producer_ms)), f"{producer_ms}.mkv"))


def wait_while(reader, arn: str, action) -> tuple[bool, float]:
    """Start waiting on `reader` for `arn`, run `action` in a thread, and return (woken,
    seconds waited)."""
    async def go():
        seen = reader.new_fragments.seen(arn)
        t0 = time.monotonic()
        threading.Thread(target=action).start()  # a commit before the wait is not missed
        woken = await reader.new_fragments.wait(arn, seen, PATIENCE_S)
        return woken, time.monotonic() - t0
    return asyncio.run(go())


def test_sqlite_commit_wakes_a_waiter_of_the_same_stream_only(tmp_path):
    store = SqliteStores.at(tmp_path)()
    try:
        stream, header_id = new_stream(store)
        other, other_header = new_stream(store, "other", 2)
        woken, waited = wait_while(store, stream.arn,
                                   lambda: add(store, stream.arn, header_id, 1000))
        assert woken and waited < PATIENCE_S / 2

        async def other_stream_only():
            seen = store.new_fragments.seen(stream.arn)
            add(store, other.arn, other_header, 1000)
            return await store.new_fragments.wait(stream.arn, seen, 0.5)
        assert asyncio.run(other_stream_only()) is False
    finally:
        store.close()


@pytest.fixture
def two_nodes(postgres_url, tmp_path):
    opener = PostgresStores.at(tmp_path)
    writer, reader = opener(), opener()
    yield writer, reader
    reader.close()
    writer.close()


def listening(reader, arn: str) -> None:
    reader.new_fragments.seen(arn)  # first use starts the listener
    assert reader._listener.listening.wait(10)


def test_postgres_commit_on_one_node_wakes_a_waiter_on_another(two_nodes):
    writer, reader = two_nodes
    stream, header_id = new_stream(writer)
    listening(reader, stream.arn)
    woken, waited = wait_while(reader, stream.arn,
                               lambda: add(writer, stream.arn, header_id, 1000))
    assert woken and waited < PATIENCE_S / 2


def test_postgres_rolled_back_fragment_wakes_nobody(two_nodes):
    writer, reader = two_nodes
    stream, header_id = new_stream(writer)
    listening(reader, stream.arn)

    woken, _ = wait_while(reader, stream.arn, lambda: add(writer, stream.arn, header_id, 1000))
    assert woken  # the original's notification is in; now its resend

    async def resend_only():
        seen = reader.new_fragments.seen(stream.arn)
        add(writer, stream.arn, header_id, 1000)  # a resend: rolled back, nothing new
        return await reader.new_fragments.wait(stream.arn, seen, 1.0)
    assert asyncio.run(resend_only()) is False


def test_postgres_listener_reconnects_and_wakes_waiters(two_nodes):
    writer, reader = two_nodes
    stream, header_id = new_stream(writer)
    listening(reader, stream.arn)

    def cut_the_listening_connection():
        with psycopg.connect(reader.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query LIKE 'LISTEN %' AND datname = current_database()")
    woken, waited = wait_while(reader, stream.arn, cut_the_listening_connection)
    assert woken and waited < PATIENCE_S / 2  # woken to re-read what it may have missed
    assert reader._listener.listening.wait(15)  # listening again
    woken, _ = wait_while(reader, stream.arn, lambda: add(writer, stream.arn, header_id, 2000))
    assert woken


def test_a_waiter_times_out_when_nothing_comes():
    signal = NewFragments()

    async def wait():
        return await signal.wait("arn", signal.seen("arn"), 0.2)
    assert asyncio.run(wait()) is False
    assert not signal._waiters  # nothing left behind
