"""The SQLite metadata store's fragment methods, on a real SQLite file.

Headers, fragment numbering, the queries behind ListFragments / GetMediaForFragmentList /
GetMedia / HLS (by seq, by time range on either clock, by number, at a time, overlapping a
range), cascading deletes and server secrets.
"""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from kvslite.server.store.metadata import Clock, Fragment, Stream, fragment_number, seq_of
from kvslite.server.store.sqlite import SqliteMetadataStore


def make_stream(name: str) -> Stream:
    return Stream(name=name, arn=f"arn:aws:kinesisvideo:r:1:stream/{name}/1", version="v1",
                  creation_time=1.0, data_retention_hours=24, kms_key_id="k")


@pytest.fixture
def store(tmp_path):
    store = SqliteMetadataStore(tmp_path / "meta.db")
    yield store
    store.close()


@pytest.fixture
def arn(store) -> str:
    stream = make_stream("a")
    store.create_stream(stream, {})
    return stream.arn


@pytest.fixture
def other_arn(store) -> str:
    stream = make_stream("b")
    store.create_stream(stream, {})
    return stream.arn


def add(store, arn: str, producer_ms: int, duration_ms: int = 1000, *,
        server_ms: int | None = None, header_id: int | None = None,
        digest: bytes | None = None) -> Fragment:
    """A fragment with every field derived from its producer start, so rows are checkable.
    Each call stores new content (its own digest) unless `digest` is given."""
    if header_id is None:
        header_id = store.save_header(arn, b"header of " + arn.encode())
    fragment, _ = store.add_fragment(
        arn=arn, producer_ms=producer_ms,
        server_ms=producer_ms + 50_000 if server_ms is None else server_ms,
        duration_ms=duration_ms, size=1000 + producer_ms % 997, header_id=header_id,
        blob_key=f"streams/x/{producer_ms}-{next(_unique)}.mkv",
        frames=producer_ms.to_bytes(8, "big") * 3,
        digest=digest if digest is not None else next(_unique).to_bytes(32, "big"))
    return fragment


def sql(store, query: str, params=()) -> list[tuple]:
    """Rows of one query, on a connection of its own to the store's file."""
    with sqlite3.connect(store.path) as conn:
        return conn.execute(query, params).fetchall()


_unique = itertools.count(1)
SPAN = 60_000  # the longest fragment span lookups assume


def seqs(fragments) -> list[int]:
    return [f.seq for f in fragments]


# ----------------------------------------------------------------------------- headers

def test_save_header_reuses_only_an_identical_latest_header(store, arn, other_arn):
    h1 = b"\x1a\x45\xdf\xa3 EBML \x00\xff header one"
    h2 = b"\x1a\x45\xdf\xa3 EBML \x00\xff header two"
    first = store.save_header(arn, h1)
    assert store.save_header(arn, h1) == first  # identical to the latest: reused
    second = store.save_header(arn, h2)
    assert second != first
    assert store.save_header(arn, h2) == second
    # identical to an older header but not to the latest: a new row
    third = store.save_header(arn, h1)
    assert third not in (first, second)
    # headers belong to a stream: the same bytes for another stream are another row
    fourth = store.save_header(other_arn, h1)
    assert fourth not in (first, second, third)
    assert [first, second, third, fourth] == [1, 2, 3, 4]
    assert store.get_header(first) == h1 and isinstance(store.get_header(first), bytes)
    assert store.get_header(second) == h2
    assert store.get_header(third) == h1
    assert store.get_header(fourth) == h1
    assert sql(store, "SELECT count(*) FROM headers") == [(4,)]


def test_get_header_of_an_unknown_id(store, arn):
    store.save_header(arn, b"h")
    with pytest.raises(KeyError):
        store.get_header(2)


def test_headers_survive_reopening(tmp_path):
    store = SqliteMetadataStore(tmp_path / "meta.db")
    stream = make_stream("a")
    store.create_stream(stream, {})
    header_id = store.save_header(stream.arn, bytes(range(256)))
    store.close()
    store = SqliteMetadataStore(tmp_path / "meta.db")
    assert store.get_header(header_id) == bytes(range(256))
    assert store.save_header(stream.arn, bytes(range(256))) == header_id
    store.close()


# ----------------------------------------------------------------------------- numbering

def test_add_fragment_numbers_each_stream_from_one(store, arn, other_arn):
    a1 = add(store, arn, 5000)
    b1 = add(store, other_arn, 5000)
    a2 = add(store, arn, 1000, digest=b"2" * 32)  # seq follows arrival, not producer time
    a3 = add(store, arn, 9000)
    b2 = add(store, other_arn, 7000)
    assert [a1.seq, a2.seq, a3.seq] == [1, 2, 3]
    assert [b1.seq, b2.seq] == [1, 2]
    assert a1.number == b1.number == "9" + "0" * 45 + "1"
    assert a3.number == "9" + "0" * 45 + "3"
    assert a1.arn == arn and b1.arn == other_arn
    # what add_fragment returned is what was stored, field for field
    assert store.list_fragments(arn, limit=10) == [a1, a2, a3]
    assert store.list_fragments(other_arn, limit=10) == [b1, b2]
    assert a2 == Fragment(arn=arn, seq=2, number="9" + "0" * 45 + "2", producer_ms=1000,
                          server_ms=51_000, duration_ms=1000, size=1003, header_id=1,
                          blob_key=a2.blob_key, frames=(1000).to_bytes(8, "big") * 3,
                          digest=b"2" * 32)


def test_fragment_numbers_are_47_digits_that_sort_like_seq():
    seq_values = [1, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 123_456_789, 10**45]
    numbers = [fragment_number(s) for s in seq_values]
    assert all(len(n) == 47 and n.isdigit() and n[0] == "9" for n in numbers)
    assert sorted(numbers) == numbers  # string order is seq order
    assert sorted(numbers, key=int) == numbers
    assert fragment_number(10) == "9" + "0" * 44 + "10"
    assert [seq_of(n) for n in numbers] == seq_values


@pytest.mark.parametrize("number", [
    "", "9", "1", "91",
    "9" + "0" * 44 + "1",  # 46 digits
    "9" + "0" * 46 + "1",  # 48 digits
    "8" + "0" * 45 + "1",  # does not start with 9
    "0" + "0" * 45 + "1",
    "9" + "0" * 44 + "a1",
    "9" + "0" * 44 + "-1",
    "9" + "0" * 44 + " 1",
    " 9" + "0" * 44 + "1",
    "9" + "0" * 44 + "1.",
])
def test_seq_of_malformed_numbers_is_none(number):
    assert seq_of(number) is None


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663"])
def test_seq_of_non_ascii_digits_is_none(digit):
    assert seq_of("9" + digit * 46) is None


# ----------------------------------------------------------------------------- lookups

def test_find_fragment_by_producer_ms_and_content(store, arn, other_arn):
    first = add(store, arn, 1000, digest=b"a" * 32)
    add(store, arn, 2000, digest=b"b" * 32)
    other = add(store, arn, 1000, digest=b"c" * 32)  # same start, other bytes: its own row
    resend = add(store, arn, 1000, digest=b"a" * 32)  # same start, same bytes: the first
    add(store, other_arn, 3000, digest=b"d" * 32)
    assert (other.seq, resend) == (3, first)
    assert store.find_fragment(arn, producer_ms=1000, digest=b"a" * 32) == first
    assert store.find_fragment(arn, producer_ms=1000, digest=b"c" * 32) == other
    assert store.find_fragment(arn, producer_ms=2000, digest=b"b" * 32).seq == 2
    assert store.find_fragment(arn, producer_ms=1001, digest=b"a" * 32) is None
    assert store.find_fragment(arn, producer_ms=2000, digest=b"a" * 32) is None
    assert store.find_fragment(arn, producer_ms=3000, digest=b"d" * 32) is None  # other's
    assert store.find_fragment(other_arn, producer_ms=3000, digest=b"d" * 32).seq == 1


def test_list_fragments_by_seq(store, arn, other_arn):
    added = [add(store, arn, 1000 * i) for i in range(1, 11)]
    add(store, other_arn, 1000)
    assert store.list_fragments(arn, limit=100) == added
    assert seqs(store.list_fragments(arn, limit=3)) == [1, 2, 3]
    assert seqs(store.list_fragments(arn, after_seq=3, limit=3)) == [4, 5, 6]
    assert seqs(store.list_fragments(arn, after_seq=8, limit=3)) == [9, 10]
    assert store.list_fragments(arn, after_seq=10, limit=3) == []
    assert seqs(store.list_fragments(other_arn, limit=100)) == [1]
    assert store.list_fragments("arn:no-such-stream", limit=100) == []


def test_list_fragments_in_a_producer_range_is_inclusive_on_starts(store, arn):
    # starts 1000, 2000, ... 10000 (each 1500 ms long, so they overlap); added out of order
    order = [3, 1, 2, 5, 4, 6, 7, 9, 8, 10]
    by_start = {1000 * i: add(store, arn, 1000 * i, 1500) for i in order}
    seq_of_start = {start: f.seq for start, f in by_start.items()}

    def listed(start_ms, end_ms, **kwargs):
        return store.list_fragments(arn, clock=Clock.PRODUCER, start_ms=start_ms,
                                    end_ms=end_ms, limit=kwargs.pop("limit", 100), **kwargs)

    got = listed(3000, 6000)
    assert [f.producer_ms for f in got] == [3000, 5000, 4000, 6000]  # by seq, not by time
    assert seqs(got) == [1, 4, 5, 6]
    # a fragment that started before the range but is still running is not included
    assert [f.producer_ms for f in listed(3001, 5999)] == [5000, 4000]
    assert [f.producer_ms for f in listed(3000, 3000)] == [3000]
    assert listed(3001, 3999) == []
    assert len(listed(0, 10**13)) == 10
    # pagination within the range
    # (seq 2 starts at 1000 and seq 10 at 10000: outside)
    assert [seq_of_start[1000 * i] for i in range(2, 10)] == [3, 1, 5, 4, 6, 7, 9, 8]
    assert seqs(listed(2000, 9000, limit=3)) == [1, 3, 4]
    assert seqs(listed(2000, 9000, after_seq=4, limit=3)) == [5, 6, 7]
    assert seqs(listed(2000, 9000, after_seq=7, limit=3)) == [8, 9]
    assert listed(2000, 9000, after_seq=9, limit=3) == []


def test_list_fragments_in_a_server_range_uses_the_server_clock(store, arn):
    # producer times go up by 1000 ms; server times arrive 10 ms apart, in another era
    for i in range(6):
        add(store, arn, 1000 * i, server_ms=2_000_000 + 10 * i)
    server = store.list_fragments(arn, clock=Clock.SERVER, start_ms=2_000_010,
                                  end_ms=2_000_030, limit=100)
    assert [f.server_ms for f in server] == [2_000_010, 2_000_020, 2_000_030]
    assert seqs(server) == [2, 3, 4]
    # the same numbers on the producer clock match nothing, and vice versa
    assert store.list_fragments(arn, clock=Clock.PRODUCER, start_ms=2_000_010,
                                end_ms=2_000_030, limit=100) == []
    assert store.list_fragments(arn, clock=Clock.SERVER, start_ms=1000, end_ms=3000,
                                limit=100) == []
    assert seqs(store.list_fragments(arn, clock=Clock.PRODUCER, start_ms=1000, end_ms=3000,
                                     limit=100)) == [2, 3, 4]


def test_fragments_by_number_crosses_the_batches(store, arn, other_arn):
    header = store.save_header(arn, b"h")
    added = [add(store, arn, 10 * i, 10, header_id=header) for i in range(1, 521)]
    other = add(store, other_arn, 10)
    numbers = [f.number for f in added]
    assert len(numbers) == 520  # more than one batch of 500 bound parameters
    got = store.fragments_by_number(arn, numbers)
    assert len(got) == 520
    assert got == {f.number: f for f in added}
    # order of the request does not matter; unknown and malformed numbers are left out,
    # a number asked twice is answered once
    wanted = ["12345", ""] + numbers[::-1][:510] + [fragment_number(5000), numbers[-1]]
    got = store.fragments_by_number(arn, wanted)
    assert len(got) == 510
    assert set(got) == set(numbers[10:])
    assert all(got[n].seq == seq_of(n) for n in got)
    # numbers are per stream: stream b's fragment 1 has stream a's fragment 1's number
    assert other.number == added[0].number
    assert store.fragments_by_number(other_arn, numbers) == {other.number: other}
    assert store.fragments_by_number(arn, []) == {}


def test_latest_fragment_is_the_last_added(store, arn, other_arn):
    assert store.latest_fragment(arn) is None
    add(store, arn, 5000)
    last = add(store, arn, 1000)  # an older recording, added last
    add(store, other_arn, 9000)
    assert store.latest_fragment(arn) == last
    assert store.latest_fragment(arn).seq == 2
    assert store.latest_fragment(other_arn).seq == 1


# ----------------------------------------------------------------------------- time

def test_fragment_at(store, arn):
    f1 = add(store, arn, 1000, 500)   # [1000, 1500)
    f2 = add(store, arn, 1500, 500)   # [1500, 2000): starts where f1 ends
    f3 = add(store, arn, 3000, 400)   # [3000, 3400), after a gap

    def at(ms):
        found = store.fragment_at(arn, Clock.PRODUCER, ms, SPAN)
        return found.seq if found else None

    assert at(1000) == f1.seq
    assert at(1250) == f1.seq
    assert at(1499) == f1.seq
    assert at(1500) == f2.seq  # the end of f1 is the start of f2
    assert at(1999) == f2.seq
    assert at(2000) == f3.seq  # exactly at the end of f2: the next one starting after
    assert at(2500) == f3.seq  # in the gap: the first one after
    assert at(3399) == f3.seq
    assert at(3400) is None  # after everything
    assert at(10**13) is None
    assert at(0) == f1.seq  # before everything: the first
    assert store.fragment_at(arn, Clock.PRODUCER, 1250, SPAN) == f1


def test_fragment_at_on_the_server_clock(store, arn):
    add(store, arn, 1000, 500, server_ms=90_000)   # server [90000, 90500)
    add(store, arn, 1500, 500, server_ms=80_000)   # server [80000, 80500)

    def at(ms):
        found = store.fragment_at(arn, Clock.SERVER, ms, SPAN)
        return found.seq if found else None

    assert at(80_250) == 2
    assert at(80_500) == 1  # end of fragment 2's span: the next on the server clock
    assert at(90_499) == 1
    assert at(90_500) is None
    assert at(1250) == 2  # a producer time is read as a server time: before everything
    assert store.fragment_at(arn, Clock.PRODUCER, 1250, SPAN).seq == 1


def test_fragment_at_with_overlapping_spans_takes_the_latest_start(store, arn):
    add(store, arn, 1000, 1000)  # [1000, 2000)
    add(store, arn, 1400, 1000)  # [1400, 2400)
    add(store, arn, 1400, 1000)  # same start, added later: wins the tie
    add(store, arn, 1200, 1000)  # [1200, 2200), added last but starts earlier

    def at(ms):
        return store.fragment_at(arn, Clock.PRODUCER, ms, SPAN).seq

    assert at(1100) == 1
    assert at(1300) == 4
    assert at(1400) == 3
    assert at(1999) == 3
    assert at(2399) == 3
    assert store.fragment_at(arn, Clock.PRODUCER, 2400, SPAN) is None


def test_fragment_at_finds_a_longer_fragment_around_a_shorter_one(store, arn):
    add(store, arn, 1000, 480)  # [1000, 1480): a full GOP
    add(store, arn, 1000, 240)  # [1000, 1240): a short last GOP, same start (e.g. server clock)
    add(store, arn, 5000, 480)
    found = store.fragment_at(arn, Clock.PRODUCER, 1300, SPAN)
    assert found is not None and found.seq == 1


def test_fragments_overlapping(store, arn):
    add(store, arn, 0, 1000)       # 1: [0, 1000) ends exactly at start_ms: out
    add(store, arn, 500, 1000)     # 2: [500, 1500) overlaps the start: in
    add(store, arn, 1000, 200)     # 3: [1000, 1200) starts at start_ms: in
    add(store, arn, 2000, 100)     # 4: starts exactly at end_ms: in
    add(store, arn, 2001, 100)     # 5: starts after end_ms: out
    add(store, arn, 1500, 100)     # 6: inside, added late: ordered by start
    add(store, arn, 1001, 1)       # 7: [1001, 1002): in

    def overlapping(start_ms, end_ms, clock=Clock.PRODUCER):
        return seqs(store.fragments_overlapping(arn, clock, start_ms, end_ms, 1000))

    assert overlapping(1000, 2000) == [2, 3, 7, 6, 4]
    assert overlapping(999, 999) == [1, 2]
    assert overlapping(1000, 1000) == [2, 3]
    assert overlapping(2100, 2100) == [5]  # 4 ends at 2100; 5 starts at 2100 - 99
    assert overlapping(2101, 5000) == []
    assert overlapping(-5000, -1) == []
    # the same on the server clock (server = producer + 50 s here)
    assert overlapping(51_000, 52_000, Clock.SERVER) == [2, 3, 7, 6, 4]
    assert overlapping(1000, 2000, Clock.SERVER) == []


def test_fragments_overlapping_equal_starts_go_by_seq(store, arn):
    add(store, arn, 1000, 100)
    add(store, arn, 900, 300)
    add(store, arn, 1000, 100)
    got = store.fragments_overlapping(arn, Clock.PRODUCER, 1050, 1050, 1000)
    assert [(f.producer_ms, f.seq) for f in got] == [(900, 2), (1000, 1), (1000, 3)]


# ----------------------------------------------------------------------------- lifecycle

def test_deleting_a_stream_removes_its_headers_and_fragments(store, arn, other_arn):
    header = store.save_header(arn, b"a header")
    for i in range(5):
        add(store, arn, 1000 * i, header_id=header)
    kept = [add(store, other_arn, 1000 * i) for i in range(3)]
    assert store.mark_deleting(arn, "v1")
    store.purge_stream(arn)

    assert sql(store, "SELECT count(*) FROM fragments WHERE arn = ?", (arn,)) == [(0,)]
    assert sql(store, "SELECT count(*) FROM headers WHERE arn = ?", (arn,)) == [(0,)]
    assert sql(store, "SELECT count(*) FROM fragments") == [(3,)]
    assert sql(store, "SELECT count(*) FROM headers") == [(1,)]
    assert store.list_fragments(arn, limit=100) == []
    assert store.latest_fragment(arn) is None
    assert store.find_fragment(arn, producer_ms=0, digest=b"") is None
    assert store.fragments_by_number(arn, [fragment_number(1)]) == {}
    assert store.fragment_at(arn, Clock.PRODUCER, 0, SPAN) is None
    with pytest.raises(KeyError):
        store.get_header(header)
    assert store.list_fragments(other_arn, limit=100) == kept
    # a stream created again under the same ARN starts numbering from 1
    store.create_stream(make_stream("a"), {})
    assert add(store, arn, 0).seq == 1


def test_fragments_survive_reopening(tmp_path):
    store = SqliteMetadataStore(tmp_path / "meta.db")
    stream = make_stream("a")
    store.create_stream(stream, {})
    added = [add(store, stream.arn, 1000 * i) for i in range(3)]
    store.close()
    store = SqliteMetadataStore(tmp_path / "meta.db")
    assert store.list_fragments(stream.arn, limit=10) == added
    assert add(store, stream.arn, 9000).seq == 4
    store.close()


def test_secret_is_stable_and_survives_reopening(tmp_path):
    store = SqliteMetadataStore(tmp_path / "meta.db")
    first = store.secret("tokens")
    assert isinstance(first, bytes) and len(first) == 32
    assert store.secret("tokens") == first
    other = store.secret("images")
    assert len(other) == 32 and other != first
    store.close()
    store = SqliteMetadataStore(tmp_path / "meta.db")
    assert store.secret("tokens") == first
    assert store.secret("images") == other
    assert sql(store, "SELECT count(*) FROM secrets") == [(2,)]
    store.close()
