"""The PostgreSQL metadata store beyond the contract suite (test_store_contract.py runs
that for it): test_store_fragments.py's cases on PostgreSQL, every fragment query answered
as SQLite answers it on the same data, migrations, the database's clock for leases, a
full disk, names sorting as in SQLite. Runs on tests/postgres_server.py's server."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import psycopg
import pytest
from postgres_server import fresh_database

# test_store_fragments.py's cases that use only the store's API, collected here again
# with this module's fixtures: `store` is a PostgresMetadataStore
from test_store_fragments import (  # noqa: F401 - collected by pytest (fixtures too)
    SPAN,
    add,
    arn,
    make_stream,
    other_arn,
    test_add_fragment_numbers_each_stream_from_one,
    test_find_fragment_by_producer_ms_and_content,
    test_fragment_at,
    test_fragment_at_finds_a_longer_fragment_around_a_shorter_one,
    test_fragment_at_on_the_server_clock,
    test_fragment_at_with_overlapping_spans_takes_the_latest_start,
    test_fragments_overlapping,
    test_fragments_overlapping_equal_starts_go_by_seq,
    test_get_header_of_an_unknown_id,
    test_latest_fragment_is_the_last_added,
    test_list_fragments_by_seq,
    test_list_fragments_in_a_producer_range_is_inclusive_on_starts,
    test_list_fragments_in_a_server_range_uses_the_server_clock,
)

from kvslite.server.api_errors import OutOfSpace
from kvslite.server.store.metadata import (Clock, NameTaken, StreamNotActive, fragment_number,
                                    seq_of)
from kvslite.server.store.postgres import PostgresMetadataStore
from kvslite.server.store.postgres_schema import MIGRATIONS
from kvslite.server.store.sqlite import SqliteMetadataStore


@pytest.fixture
def url(postgres_url) -> str:
    return fresh_database(postgres_url)


@pytest.fixture
def store(url):
    store = PostgresMetadataStore(url)
    yield store
    store.close()


def sql(url: str, query: str, params=()) -> list[tuple]:
    """Run one statement on its own connection; its rows, if it returns any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


# -- test_store_fragments.py's cases that reach into SQLite, on PostgreSQL ---------------


def test_save_header_reuses_only_an_identical_latest_header(store, arn, other_arn, url):
    h1, h2 = b"\x1a\x45\xdf\xa3 \x00\xff one", b"\x1a\x45\xdf\xa3 \x00\xff two"
    ids = [store.save_header(arn, h1), store.save_header(arn, h1),
           store.save_header(arn, h2), store.save_header(arn, h1),
           store.save_header(other_arn, h1)]
    assert ids == [1, 1, 2, 3, 4]
    assert [store.get_header(i) for i in (1, 2, 3, 4)] == [h1, h2, h1, h1]
    assert isinstance(store.get_header(1), bytes)
    assert sql(url, "SELECT count(*) FROM headers") == [(4,)]


def test_fragments_by_number_takes_any_number_of_numbers(store, arn, other_arn):
    header = store.save_header(arn, b"h")
    added = [add(store, arn, 10 * i, 10, header_id=header) for i in range(1, 521)]
    other = add(store, other_arn, 10)
    numbers = [f.number for f in added]
    assert store.fragments_by_number(arn, numbers) == {f.number: f for f in added}
    wanted = ["12345", ""] + numbers[::-1][:510] + [fragment_number(5000), numbers[-1]]
    got = store.fragments_by_number(arn, wanted)
    assert set(got) == set(numbers[10:]) and all(got[n].seq == seq_of(n) for n in got)
    assert store.fragments_by_number(other_arn, numbers) == {other.number: other}
    assert store.fragments_by_number(arn, []) == {}


def test_purging_a_stream_removes_its_rows_and_leases(store, arn, other_arn, url):
    header = store.save_header(arn, b"a header")
    for i in range(5):
        add(store, arn, 1000 * i, header_id=header)
    store.put_tags(arn, {"k": "v"}, 50)
    kept = [add(store, other_arn, 1000 * i) for i in range(3)]
    lease = store.acquire_lease(f"put-media:{arn}", "A", limit=1, ttl_ms=60_000)
    other_lease = store.acquire_lease(f"put-media:{other_arn}", "A", limit=1, ttl_ms=60_000)
    assert store.mark_deleting(arn, "v1")
    store.purge_stream(arn, [f"put-media:{arn}", f"get-media:{arn}"])

    assert sql(url, "SELECT arn, count(*) FROM fragments GROUP BY arn") == [(other_arn, 3)]
    assert sql(url, "SELECT arn FROM headers") == [(other_arn,)]
    assert sql(url, "SELECT count(*) FROM tags") == [(0,)]
    assert sql(url, "SELECT resource FROM leases UNION ALL SELECT resource "
                    "FROM lease_epochs") == [(other_lease.resource,)] * 2
    assert store.list_fragments(arn, limit=100) == [] and store.get_tags(arn) == {}
    assert store.fragment_at(arn, Clock.PRODUCER, 0, SPAN) is None
    with pytest.raises(KeyError):
        store.get_header(header)
    assert store.list_fragments(other_arn, limit=100) == kept
    assert not store.renew_lease(lease, 1000)
    store.create_stream(make_stream("a"), {})  # the same ARN again numbers from 1
    assert add(store, arn, 0).seq == 1


def test_records_survive_reopening(url):
    store = PostgresMetadataStore(url)
    stream = make_stream("a")
    store.create_stream(stream, {"t": "1"})
    header = store.save_header(stream.arn, bytes(range(256)))
    added = [add(store, stream.arn, 1000 * i, header_id=header) for i in range(3)]
    secret = store.secret("tokens")
    store.close()
    store = PostgresMetadataStore(url)
    try:
        assert store.get_stream(arn=stream.arn) == stream
        assert store.get_tags(stream.arn) == {"t": "1"}
        assert store.list_fragments(stream.arn, limit=10) == added
        assert store.save_header(stream.arn, bytes(range(256))) == header
        assert add(store, stream.arn, 9000).seq == 4
        assert store.secret("tokens") == secret and len(secret) == 32
        assert store.secret("images") != secret
    finally:
        store.close()


# -- every fragment query as SQLite answers it ------------------------------------------


def load_the_same(stores, rng: random.Random) -> tuple[str, str, int]:
    """Two streams; the first gets 120 fragments (some resends) with repeated and
    overlapping starts, gaps, three headers in runs, and server times that run apart from
    the producer's; then 4 are deleted. Returns the ARNs and how many rows `a` has."""
    streams = [make_stream("a"), make_stream("b")]
    for store in stores:
        for stream in streams:
            store.create_stream(stream, {})
    a, b = (s.arn for s in streams)
    headers = [[store.save_header(owner, f"header {k}".encode())
                for k, owner in enumerate((a, a, a, b))] for store in stores]
    assert headers[0] == headers[1]
    producer, server, created, last = 1_000_000, 5_000_000, 0, {}
    for k in range(120):
        if rng.random() < 0.15:
            producer -= rng.choice([0, 0, 500, 2000])  # a repeated or earlier start
        duration = rng.choice([200, 1000, 1000, 2000, 2999])
        header = headers[0][min(k // 40, 2) if rng.random() < 0.9 else rng.randrange(3)]
        fields = {"producer_ms": producer, "server_ms": server, "duration_ms": duration,
                  "size": k, "header_id": header, "blob_key": f"a/{k}", "frames": bytes([k]),
                  "digest": rng.randbytes(32)}
        if k % 10 == 9:  # a resend of the last fragment: only its blob is new
            fields = {**last, "blob_key": f"a/{k}"}
        last = fields
        results = [store.add_fragment(arn=a, **fields) for store in stores]
        assert results[0] == results[1] and results[0][1] == (k % 10 != 9)
        created += results[0][1]
        producer += duration + rng.choice([0, 0, 0, 1, 40, 3000])
        server += rng.choice([0, 700, 1000, 1500, 9000])
    for store in stores:
        store.add_fragment(arn=b, producer_ms=1_000_500, server_ms=5_000_500, duration_ms=999,
                           size=1, header_id=headers[0][3], blob_key="b/0", frames=b"",
                           digest=b"b")
        store.delete_fragments(a, [3, 50, 51, 52])
    return a, b, created - 4


def test_every_fragment_query_answers_as_sqlite_does(store, tmp_path):
    lite = SqliteMetadataStore(tmp_path / "meta.db")
    try:
        rng = random.Random(20240611)
        a, b, rows = load_the_same([lite, store], rng)
        calls = []
        for arn in (a, b, "arn:unknown"):
            calls += [("latest_fragment", (arn,), {}),
                      ("list_fragments", (arn,), {"limit": 1000}),
                      ("list_fragments", (arn,), {"after_seq": 40, "limit": 7}),
                      ("fragments_by_number", (arn, [fragment_number(s) for s in
                                                     range(0, 130, 3)]), {})]
        stored = lite.list_fragments(a, limit=1000)
        calls += [("find_fragment", (a,), {"producer_ms": f.producer_ms, "digest": f.digest})
                  for f in stored[::5]]
        calls.append(("referenced_blobs", ([f"a/{k}" for k in range(0, 130, 2)] + ["b/0"],),
                      {}))
        for clock in Clock:
            times = sorted({f.start_ms(clock) for f in stored})
            low, high = times[0] - 5000, times[-1] + 5000
            grid = sorted(set(range(low, high, (high - low) // 150)) | set(times)
                          | {t + f.duration_ms for f in stored for t in [f.start_ms(clock)]})
            for ms in grid[::2]:
                calls.append(("fragment_at", (a, clock, ms, 3000), {}))
            spans = sorted({tuple(sorted(rng.sample(grid, 2))) for _ in range(60)})
            for start, end in spans:
                calls += [
                    ("fragments_overlapping", (a, clock, start, end, 3000), {}),
                    ("list_fragments", (a,), {"clock": clock, "start_ms": start,
                                              "end_ms": end, "limit": 1000}),
                    ("count_starting", (a, clock, start, end), {}),
                    ("count_starting", (a, clock, start, end), {"newest_only": True})]
                for newest_only in (False, True):
                    for gap_ms in (None, 0, 50, 2000):
                        calls.append(("count_discontinuities", (a, clock, start, end),
                                      {"newest_only": newest_only, "gap_ms": gap_ms}))
                    for descending in (False, True):
                        first = lite.fragments_starting(a, clock, start, end, limit=3,
                                                        descending=descending,
                                                        newest_only=newest_only)
                        after = (first[-1].start_ms(clock), first[-1].seq) if first else None
                        calls += [("fragments_starting", (a, clock, start, end),
                                   {"descending": descending, "newest_only": newest_only,
                                    "after": page, "limit": limit})
                                  for page, limit in ((None, 1000), (None, 3), (after, 5))]
            calls += [("fragments_received_before", (a, ms, limit), {})
                      for ms in grid[::10] for limit in (1, 1000)]
        for name, args, kwargs in calls:
            want = getattr(lite, name)(*args, **kwargs)
            got = getattr(store, name)(*args, **kwargs)
            assert got == want, (name, args, kwargs)
        assert len(calls) > 3000
        # the data hit the cases that matter: resends, shared starts, header changes, gaps
        assert len(stored) == rows == 120 - 12 - 4
        starts = [f.producer_ms for f in stored]
        assert len(set(starts)) < len(starts)
        assert lite.count_discontinuities(a, Clock.PRODUCER, 0, 10**13) > 2
        assert lite.count_discontinuities(a, Clock.PRODUCER, 0, 10**13, gap_ms=50) > \
            lite.count_discontinuities(a, Clock.PRODUCER, 0, 10**13)
    finally:
        lite.close()


# -- migrations --------------------------------------------------------------------------


def test_migrations_are_applied_once_and_recorded(url):
    PostgresMetadataStore(url).close()
    first = sql(url, "SELECT version, applied_at FROM kvslite_schema ORDER BY version")
    assert [v for v, _ in first] == list(range(1, len(MIGRATIONS) + 1))
    PostgresMetadataStore(url).close()
    assert sql(url, "SELECT version, applied_at FROM kvslite_schema ORDER BY version") == first


def test_refuses_a_newer_schema(url):
    PostgresMetadataStore(url).close()
    sql(url, "INSERT INTO kvslite_schema (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="newer than this kvslite"):
        PostgresMetadataStore(url)


# -- behaviour particular to PostgreSQL -------------------------------------------------


def test_leases_run_on_the_database_clock(url, monkeypatch):
    """Without an injected clock, a lease's expiry is read on the database's clock: a node
    whose own clock is an hour ahead still holds its 400 ms lease for 400 ms."""
    store = PostgresMetadataStore(url)
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        lease = store.acquire_lease("put-media:x", "A", limit=1, ttl_ms=400)
        assert lease is not None
        (expires_in,) = sql(url, "SELECT expires_ms - floor(extract(epoch FROM "
                                  "clock_timestamp()) * 1000) FROM leases")[0]
        assert 0 < expires_in <= 400
        assert store.acquire_lease("put-media:x", "B", limit=1, ttl_ms=400) is None
        assert store.renew_lease(lease, 400)
        time.sleep(0.5)
        assert not store.renew_lease(lease, 400)
        taken = store.acquire_lease("put-media:x", "B", limit=1, ttl_ms=400)
        assert taken is not None and taken.epoch == lease.epoch + 1
    finally:
        store.close()


def test_a_full_disk_is_out_of_space_and_commits_nothing(store, url):
    stream = make_stream("a")
    store.create_stream(stream, {})
    header = store.save_header(stream.arn, b"h")
    sql(url, "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS "
             "$$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; "
             "END $$")
    for table in ("fragments", "tags"):
        sql(url, f"CREATE TRIGGER full_{table} BEFORE INSERT ON {table} "
                 f"FOR EACH ROW EXECUTE FUNCTION disk_full()")
    with pytest.raises(OutOfSpace, match="out of disk space"):
        add(store, stream.arn, 1000, header_id=header)
    with pytest.raises(OutOfSpace):
        store.put_tags(stream.arn, {"k": "v"}, 50)
    sql(url, "DROP FUNCTION disk_full() CASCADE")
    assert store.get_tags(stream.arn) == {}
    assert add(store, stream.arn, 1000, header_id=header).seq == 1  # no seq was spent


def test_streams_sort_and_match_by_prefix_as_in_sqlite(store, tmp_path):
    """Names compare byte by byte (COLLATE "C"), whatever the database's locale, and a
    prefix matches exactly (no LIKE wildcards)."""
    lite = SqliteMetadataStore(tmp_path / "meta.db")
    try:
        names = ["b", "B", "a_1", "a%2", "ab", "a.b", "é", "Z", "z", "_", "a", "A-1"]
        for s in (lite, store):
            for name in names:
                s.create_stream(make_stream(name), {})
            with pytest.raises(NameTaken):
                s.create_stream(replace(make_stream("é"), arn="arn:another"), {})
            assert s.mark_deleting(make_stream("B").arn, None)
        for prefix in ("", "a", "a_", "a%", "A", "_", "é", "x"):
            for after in ("", "a", "a_1", "b"):
                for limit in (2, 100):
                    want = lite.list_streams(prefix=prefix, after=after, limit=limit)
                    assert store.list_streams(prefix=prefix, after=after,
                                              limit=limit) == want
        assert [s.name for s in store.list_streams(prefix="a_", after="", limit=9)] == ["a_1"]
        assert store.deleting_streams() == lite.deleting_streams()
        with pytest.raises(StreamNotActive):
            add(store, make_stream("B").arn, 1000)
    finally:
        lite.close()
