"""The MetadataStore contract (src/kvslite/server/store/metadata.py), proved with real
concurrent writers, for every store in STORES.

Each guarantee is raced by writers in separate processes (started with "spawn", each
opening its own store on the shared location) and in threads (some with an instance of
their own, some sharing one), all released together by one barrier; see
tests/store_contract_workers.py. Every assertion counts exactly.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # spawned writers import the module below
import store_contract_workers as workers
from store_contract_workers import digest_of, fragment_fields, make_channel, make_stream

from kvslite.server import metrics
from kvslite.server.store.metadata import (
    ACTIVE,
    DELETING,
    LeaseLost,
    MappedElsewhere,
    NameTaken,
    StreamNotActive,
    fragment_number,
)
from kvslite.server.store.sql_iam import (
    AccessKey,
    IamUser,
    LimitReached,
    NoSuchUser,
    UserInUse,
)

# Every store the suite runs against: location (a fresh, empty directory) -> a picklable
# callable that opens a new instance of the store kept there, `opener(clock=None)`.
# PostgreSQL runs on tests/postgres_server.py's throwaway server, a fresh database per
# location (skipped where PostgreSQL is not installed).
STORES = {
    "sqlite": workers.SqliteStores.at,
    "postgresql": workers.PostgresStores.at,
}


@pytest.fixture(params=sorted(STORES))
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def stores_at(store_kind):
    return STORES[store_kind]


@pytest.fixture
def store_factory(stores_at, tmp_path):
    return stores_at(tmp_path)


@pytest.fixture
def store(store_factory):
    store = store_factory()
    yield store
    store.close()


@pytest.fixture
def clock():
    return workers.SharedClock()


@pytest.fixture
def clocked(store_factory, clock):
    """An instance of the store whose lease times are read on `clock`."""
    store = store_factory(clock)
    yield store
    store.close()


def new_stream(store, name: str = "cam", serial: int = 1, tags: dict | None = None):
    stream = make_stream(name, serial)
    store.create_stream(stream, tags or {})
    return stream, store.save_header(stream.arn, b"EBML header of " + stream.arn.encode())


def add(store, arn: str, header_id: int, producer_ms: int, text: str, **kw):
    return store.add_fragment(**fragment_fields(arn, header_id, producer_ms, digest_of(text),
                                                f"{arn}/{text}.mkv"), **kw)


# -- 1. seq allocation -------------------------------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_seqs_are_allocated_one_by_one_without_gaps_or_repeats(store, store_factory):
    """4 processes x 25 + 4 threads x 25 fragments, alternating between two streams (13 +
    12 or 12 + 13 per writer): each stream gets seqs exactly 1..100, numbered
    fragment_number(seq), each row as its writer was told, and each writer's fragments come
    back in increasing seq."""
    a, header_a = new_stream(store, "a")
    b, header_b = new_stream(store, "b")
    headers = {a.arn: header_a, b.arn: header_b}
    results = workers.race(store_factory, workers.add_fragments, processes=4, threads=4,
                           args=([a.arn, b.arn], headers, 25))

    assert [len(r) for r in results] == [25] * 8
    assert all(created for r in results for _, created in r)
    told = {(f.arn, f.seq): f for r in results for f, _ in r}
    assert len(told) == 200  # no (stream, seq) was handed to two writers
    for arn in (a.arn, b.arn):
        seqs = sorted(seq for (s, seq) in told if s == arn)
        assert seqs == list(range(1, 101))
        stored = store.list_fragments(arn, limit=1000)
        assert [f.seq for f in stored] == list(range(1, 101))
        assert stored == [told[(arn, seq)] for seq in range(1, 101)]  # as each writer was told
        assert store.latest_fragment(arn).seq == 100
        numbers = [fragment_number(seq) for seq in range(1, 101)]
        assert [f.number for f in stored] == numbers
        assert sorted(store.fragments_by_number(arn, numbers)) == numbers
    for w, r in enumerate(results):
        for i, arn in enumerate((a.arn, b.arn)):
            mine = [f.seq for f, _ in r if f.arn == arn]
            assert len(mine) == (13 if (w + i) % 2 == 0 else 12)
            assert mine == sorted(mine) and len(set(mine)) == len(mine)


def test_a_seq_is_never_handed_out_again_after_its_fragment_is_deleted(store):
    stream, header_id = new_stream(store)
    first = [add(store, stream.arn, header_id, 1000 * k, f"old {k}")[0] for k in range(3)]
    assert [f.seq for f in first] == [1, 2, 3]
    store.delete_fragments(stream.arn, [1, 2, 3])  # what Sweeper.expire does to an idle stream
    fragment, created = add(store, stream.arn, header_id, 10_000, "after the gap")
    assert created
    assert fragment.seq == 4 and fragment.number == fragment_number(4)


# -- 2. one fragment per (stream, producer time, digest) ---------------------------------


@pytest.mark.slow  # worker processes racing
def test_a_resend_racing_its_original_is_stored_once(store, store_factory):
    """8 writers (4 processes, 4 threads) add the same (producer_ms, digest) at the same
    moment, 10 times over: each time exactly one call creates the row, the other 7 get
    that very fragment back with created=False, and no seq is spent on them. Then all 8
    add the same producer_ms with different content: 8 rows."""
    stream, header_id = new_stream(store)
    keys = [(60_000 * (k + 1), digest_of(f"cluster {k}")) for k in range(10)]
    results = workers.race(store_factory, workers.add_same_fragments, processes=4,
                           threads=4, args=(stream.arn, header_id, keys, 5_000_000))

    stored = store.list_fragments(stream.arn, limit=1000)
    assert [f.seq for f in stored] == list(range(1, 19))
    winners = []
    for k, (producer_ms, digest) in enumerate(keys):
        calls = [same[k] for same, _ in results]
        assert sum(created for _, created in calls) == 1
        winner = next(f for f, created in calls if created)
        assert all(f == winner for f, _ in calls)
        assert (winner.producer_ms, winner.digest) == (producer_ms, digest)
        assert store.find_fragment(stream.arn, producer_ms=producer_ms, digest=digest) == winner
        assert sum(f.producer_ms == producer_ms for f in stored) == 1
        winners.append(winner)
    assert sorted(f.seq for f in winners) == list(range(1, 11))
    losers = {f"w{w}/{ms}.mkv" for w in range(8) for ms, _ in keys} - \
        {f.blob_key for f in winners}
    assert len(losers) == 70 and store.referenced_blobs(sorted(losers)) == set()

    own = [own for _, own in results]
    assert all(created for _, created in own)
    assert sorted(f.seq for f, _ in own) == list(range(11, 19))
    assert sum(f.producer_ms == 5_000_000 for f in stored) == 8
    for w, (fragment, _) in enumerate(own):
        assert fragment.digest == digest_of(f"writer {w}'s own")
        assert store.find_fragment(stream.arn, producer_ms=5_000_000,
                                   digest=fragment.digest) == fragment


# -- 3. the tag limit --------------------------------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_the_tag_limit_is_checked_and_applied_in_one_step(store, store_factory):
    """10 writers (4 processes, 6 threads). Round 1: a stream with no tags, limit 50, each
    puts 10 new keys: exactly 5 succeed, and the stream holds exactly their 50 tags.
    Round 2: a stream with 40 tags, limit 45, each overwrites 4 of them (its own) and adds
    1 new key: overwrites do not count, so exactly 5 succeed; a failed batch changes
    nothing, not even its overwrites. Round 3: at the limit, all overwrite the same 10
    keys: all 10 succeed and the count stays 45."""
    empty, _ = new_stream(store, "empty")
    existing = {f"e{i:02d}": "orig" for i in range(40)}
    full, _ = new_stream(store, "full", tags=existing)
    round1 = [{f"w{w}-k{j}": f"{w}.{j}" for j in range(10)} for w in range(10)]
    round2 = [{**{f"e{4 * w + j:02d}": f"w{w}" for j in range(4)}, f"new-w{w}": "x"}
              for w in range(10)]
    round3 = [{f"e{j:02d}": f"r3-w{w}" for j in range(10)} for w in range(10)]
    results = workers.race(store_factory, workers.put_tag_batches, processes=4, threads=6,
                           args=([(empty.arn, round1, 50), (full.arn, round2, 45),
                                  (full.arn, round3, 45)],))

    won1 = [w for w, (ok, _, _) in enumerate(results) if ok]
    assert len(won1) == 5 and sum(not ok for ok, _, _ in results) == 5
    tags = store.get_tags(empty.arn)
    assert len(tags) == 50
    assert tags == {k: v for w in won1 for k, v in round1[w].items()}  # whole batches only

    won2 = [w for w, (_, ok, _) in enumerate(results) if ok]
    assert len(won2) == 5 and sum(not ok for _, ok, _ in results) == 5
    # round 3, at the limit: all 10 overwrite the same 10 keys; all fit, and each batch
    # lands whole, so the 10 keys end with one writer's values
    assert [ok for _, _, ok in results] == [True] * 10
    tags = store.get_tags(full.arn)
    assert len(tags) == 45
    last = {tags[f"e{j:02d}"] for j in range(10)}
    assert len(last) == 1
    (last,) = last
    expected = dict(existing)
    for w in won2:
        expected.update(round2[w])
    expected.update(round3[int(last.removeprefix("r3-w"))])
    assert tags == expected

    # at the limit, overwriting only existing keys still fits; one more key does not
    some = list(store.get_tags(empty.arn))[:10]
    assert store.put_tags(empty.arn, {k: "again" for k in some}, 50)
    assert not store.put_tags(empty.arn, {"one-too-many": "x"}, 50)
    assert len(store.get_tags(empty.arn)) == 50


# -- 4. compare-and-set on the version ---------------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_updates_and_deletion_are_compare_and_set_on_the_version(store, store_factory):
    """8 writers (4 processes, 4 threads) update with the same expected version: exactly
    one wins and the stream carries its change; then all mark it deleting with the version
    they read: exactly one True; then all update it again: all False."""
    stream, _ = new_stream(store)
    results = workers.race(store_factory, workers.compare_and_set, processes=4, threads=4,
                           args=(stream.arn, stream.version))

    winners = [w for w, (updated, _, _, _) in enumerate(results) if updated]
    assert len(winners) == 1
    (winner,) = winners
    assert all(current == f"v2-w{winner}" for _, current, _, _ in results)
    assert sum(deleted for _, _, deleted, _ in results) == 1
    assert sum(late for _, _, _, late in results) == 0
    final = store.get_stream(arn=stream.arn)
    assert final.version == f"v2-w{winner}" and final.media_type == f"video/w{winner}"
    assert final.status == DELETING
    assert (final.name, final.creation_time, final.kms_key_id) == \
        (stream.name, stream.creation_time, stream.kms_key_id)
    assert not store.mark_deleting(stream.arn, None)  # already being deleted


# -- 5. names ----------------------------------------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_names_are_unique_among_streams_not_being_deleted(store, store_factory):
    """8 writers (4 processes, 4 threads) create "cam" at once: exactly one succeeds, 7
    get NameTaken and leave nothing behind. Once it is marked deleting, 8 writers create
    "cam" again: exactly one succeeds (a new ARN) while the old row stays DELETING until
    purged, with its fragments, tags and headers."""
    other, _ = new_stream(store, "cam-b")
    results = workers.race(store_factory, workers.create_named, processes=4, threads=4,
                           args=("cam", 1))
    created = [s for s, ok in results if ok]
    assert len(created) == 1 and sum(not ok for _, ok in results) == 7
    (old,) = created
    assert store.get_stream(name="cam") == old
    for stream, ok in results:
        if not ok:
            assert store.get_stream(arn=stream.arn) is None
            assert store.get_tags(stream.arn) == {}
    (winner,) = [w for w, (_, ok) in enumerate(results) if ok]
    assert store.get_tags(old.arn) == {"writer": str(winner), "batch": "1"}

    old_header = store.save_header(old.arn, b"old header")
    old_fragments = [add(store, old.arn, old_header, 1000 * k, f"old {k}")[0]
                     for k in range(3)]
    assert store.mark_deleting(old.arn, old.version)

    results = workers.race(store_factory, workers.create_named, processes=4, threads=4,
                           args=("cam", 100))
    created = [s for s, ok in results if ok]
    assert len(created) == 1 and sum(not ok for _, ok in results) == 7
    (new,) = created
    assert new.arn != old.arn
    assert store.get_stream(name="cam") == new
    deleting = store.get_stream(arn=old.arn)
    assert deleting.status == DELETING and deleting.name == "cam"
    assert store.list_streams(prefix="", after="", limit=100) == [new, other]
    assert store.list_streams(prefix="cam", after="cam", limit=100) == [other]
    assert store.deleting_streams() == [deleting]
    with pytest.raises(NameTaken):
        store.create_stream(make_stream("cam", 999), {})

    new_header = store.save_header(new.arn, b"new header")
    new_fragment, _ = add(store, new.arn, new_header, 1000, "new 0")
    store.purge_stream(old.arn)
    assert store.get_stream(arn=old.arn) is None
    assert store.deleting_streams() == []
    assert store.list_fragments(old.arn, limit=100) == []
    assert store.get_tags(old.arn) == {}
    assert store.referenced_blobs([f.blob_key for f in old_fragments]) == set()
    with pytest.raises(KeyError):
        store.get_header(old_header)
    # the new stream of the same name is untouched
    assert store.get_stream(name="cam") == new
    assert store.get_stream(arn=new.arn).status == ACTIVE
    assert store.list_fragments(new.arn, limit=100) == [new_fragment]
    assert store.get_header(new_header) == b"new header"
    assert len(store.get_tags(new.arn)) == 2


# -- 6. add_fragment only into an ACTIVE stream ------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_add_fragment_checks_the_stream_is_active_in_the_same_step(store, store_factory):
    """4 processes and 3 threads add fragments as fast as they can; once each has some
    stored, a fourth thread marks the stream deleting: every writer is then refused with
    StreamNotActive, and the rows are exactly the adds that were told they succeeded, none
    committed after the stream was marked. An unknown ARN is refused too."""
    stream, header_id = new_stream(store)
    jobs = [workers.add_until_refused] * 7 + [workers.delete_midway]
    results = workers.race(store_factory, jobs, processes=4, threads=4,
                           args=(stream.arn, header_id, 7))

    marked, seq_when_marked = results[7]
    assert marked
    adds = results[:7]
    assert [refusal for _, refusal in adds] == ["StreamNotActive"] * 7
    told = sorted(f.seq for added, _ in adds for f in added)
    assert told == list(range(1, seq_when_marked + 1))  # none after the mark, none lost
    assert all(len(added) >= 3 for added, _ in adds)  # all were adding when it was marked
    stored = store.list_fragments(stream.arn, limit=100_000)
    assert [f.seq for f in stored] == told

    with pytest.raises(StreamNotActive):  # nor as a resend of a fragment it holds
        store.add_fragment(**fragment_fields(stream.arn, header_id, stored[0].producer_ms,
                                             stored[0].digest, "resend.mkv"))
    with pytest.raises(StreamNotActive):
        add(store, stream.arn, header_id, 99_000_000, "after")
    unknown = make_stream("never-created").arn
    with pytest.raises(StreamNotActive):
        add(store, unknown, header_id, 1000, "unknown")
    assert store.list_fragments(unknown, limit=10) == []
    assert len(store.list_fragments(stream.arn, limit=100_000)) == seq_when_marked


def _at_once(threads: int, job) -> list:
    """Run `job(thread_id)` in `threads` threads released together; their results (or
    exceptions) by thread id."""
    start, results = threading.Barrier(threads), [None] * threads

    def run(i: int) -> None:
        start.wait(30)
        try:
            results[i] = job(i)
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            results[i] = e

    workers_ = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers_:
        worker.start()
    for worker in workers_:
        worker.join(60)
    return results


def _commits() -> float:
    return metrics.FRAGMENT_COMMITS._value.get()


def test_fragments_added_at_once_share_commits_and_each_gets_its_own_outcome(store):
    """16 threads sharing one instance each add 6 new fragments over 4 streams, resend
    their first and add one to a stream being deleted, all at once: the 96 new fragments
    take seqs 1..24 in each stream and are stored as each thread was told, in fewer
    commits than fragments (group commit); each resend gets its original back, and each
    refusal is its thread's own."""
    streams = [new_stream(store, f"cam{i}") for i in range(4)]
    gone, gone_header = new_stream(store, "gone")
    assert store.mark_deleting(gone.arn, None)

    def job(t: int):
        added = []
        for k in range(6):
            stream, header_id = streams[(t + k) % 4]
            added.append(add(store, stream.arn, header_id, 1_000_000 * (t + 1) + 1000 * k,
                             f"thread {t} fragment {k}"))
        resent = add(store, added[0][0].arn, added[0][0].header_id, added[0][0].producer_ms,
                     f"thread {t} fragment 0")
        try:
            add(store, gone.arn, gone_header, 1000 * t, f"thread {t} to a deleted stream")
            refused = None
        except StreamNotActive as e:
            refused = e
        return added, resent, refused

    commits_before = _commits()
    results = _at_once(16, job)
    commits = _commits() - commits_before

    assert not [r for r in results if isinstance(r, Exception)]
    told = [f for added, _, _ in results for f, created in added if created]
    assert len(told) == 96
    for stream, _ in streams:
        stored = store.list_fragments(stream.arn, limit=1000)
        assert [f.seq for f in stored] == list(range(1, 25))
        assert sorted((f for f in told if f.arn == stream.arn), key=lambda f: f.seq) == stored
    assert [resent for _, resent, _ in results] == [(added[0][0], False)
                                                     for added, _, _ in results]
    assert [str(refused) for _, _, refused in results] == [str(StreamNotActive(gone.arn))] * 16
    assert store.list_fragments(gone.arn, limit=10) == []
    assert 1 <= commits < 96  # the 96 rows (and the resends' lookups) shared transactions


def test_a_broken_row_fails_alone_when_it_shares_a_commit(store):
    """16 threads add fragments at once; every fourth thread's third fragment names a
    header that does not exist (its row breaks the foreign key): that add raises the
    database's IntegrityError, and every other add, in the same batch or not, is stored
    with seqs 1..N without a gap."""
    import psycopg  # both drivers' IntegrityError

    stream, header_id = new_stream(store)

    def job(t: int):
        outcomes = []
        for k in range(4):
            broken = t % 4 == 0 and k == 2
            try:
                outcomes.append(add(store, stream.arn, 999_999 if broken else header_id,
                                    1_000_000 * (t + 1) + 1000 * k, f"thread {t} {k}"))
            except (sqlite3.IntegrityError, psycopg.IntegrityError) as e:
                outcomes.append(e)
        return outcomes

    results = _at_once(16, job)
    failed = [(t, k) for t, r in enumerate(results) for k, o in enumerate(r)
              if isinstance(o, Exception)]
    assert failed == [(0, 2), (4, 2), (8, 2), (12, 2)]
    told = sorted((o[0] for r in results for o in r if not isinstance(o, Exception)),
                  key=lambda f: f.seq)
    assert [f.seq for f in told] == list(range(1, 61))
    assert store.list_fragments(stream.arn, limit=1000) == told


# -- 7. leases ---------------------------------------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_acquire_lease_admits_exactly_limit_writers(store, store_factory):
    """30 writers (6 processes, 24 threads) acquire one of 3 slots: exactly 3 get one, with
    3 different epochs; a release frees a slot at once, for a grant with a higher epoch."""
    resource = "get-media:arn:aws:kinesisvideo:us-east-1:123456789012:stream/cam/1"
    results = workers.race(store_factory, workers.acquire, processes=6, threads=24,
                           args=(resource, 3, 60_000))

    granted = [lease for lease in results if lease is not None]
    assert len(granted) == 3 and results.count(None) == 27
    assert len({lease.epoch for lease in granted}) == 3
    assert len({lease.holder for lease in granted}) == 3
    assert all(lease.resource == resource for lease in granted)
    assert store.acquire_lease(resource, "late", limit=3, ttl_ms=60_000) is None
    # other resources have slots of their own
    assert store.acquire_lease(resource + "-other", "late", limit=3, ttl_ms=60_000)

    store.release_lease(granted[0])
    again = store.acquire_lease(resource, "late", limit=3, ttl_ms=60_000)
    assert again is not None and again.epoch > max(lease.epoch for lease in granted)
    assert not store.renew_lease(granted[0], 60_000)  # released: nothing to renew
    assert store.acquire_lease(resource, "later", limit=3, ttl_ms=60_000) is None


def test_purging_a_stream_removes_the_leases_it_is_given_whatever_their_names(store):
    """Lease resources are opaque to the store: purge_stream removes exactly those named,
    not others that merely look like the stream's (the archive composes the names)."""
    stream, _ = new_stream(store)
    given = [f"put-media:{stream.arn}", f"{stream.arn}/some-other-scheme"]
    kept = [f"get-media:{stream.arn}", f"put-media:{stream.arn}-2", "sweeper"]
    for resource in given + kept:
        assert store.acquire_lease(resource, "A", limit=1, ttl_ms=60_000) is not None
    assert store.mark_deleting(stream.arn, None)
    store.purge_stream(stream.arn, given)

    assert [store.count_leases(resource) for resource in given + kept] == [0, 0, 1, 1, 1]
    epochs = [store.acquire_lease(resource, "B", limit=2, ttl_ms=60_000).epoch
              for resource in given + kept]
    assert epochs == [1, 1, 2, 2, 2]  # the given resources' epochs went with them


def test_an_expired_lease_counts_for_nothing(clocked, store_factory, clock):
    """Three 1 s leases fill the slots; at 0.9 s they still count; at 1.5 s, 12 writers (4
    processes, 8 threads, on the same clock) race: the 3 old holders' renewals are all
    refused and exactly 3 of the 9 others get a slot, with epochs above the old ones."""
    resource = "get-media:stream-x"
    old = [clocked.acquire_lease(resource, f"old-{i}", limit=3, ttl_ms=1000) for i in range(3)]
    assert all(old) and len({lease.epoch for lease in old}) == 3
    clock.advance(0.9)
    assert clocked.acquire_lease(resource, "early", limit=3, ttl_ms=1000) is None
    clock.advance(0.6)
    results = workers.race(store_factory, workers.acquire_or_renew, processes=4, threads=8,
                           args=(resource, 3, 1000, old), clock=clock)

    assert results[:3] == [False, False, False]
    granted = [lease for lease in results[3:] if lease is not None]
    assert len(granted) == 3 and results[3:].count(None) == 6
    assert min(lease.epoch for lease in granted) > max(lease.epoch for lease in old)
    assert len({lease.epoch for lease in granted}) == 3
    assert clocked.acquire_lease(resource, "late", limit=3, ttl_ms=1000) is None


def test_renew_extends_a_live_lease_only(clocked, clock):
    """renew_lease of a live lease is True and extends it; of an expired or taken-over one
    False. Epochs grow with every grant; release frees the slot at once."""
    resource = "put-media:stream-y"
    lease = clocked.acquire_lease(resource, "A", limit=1, ttl_ms=1000)
    assert lease is not None
    clock.advance(0.9)
    assert clocked.renew_lease(lease, 1000)  # live: now held until 1.9 s
    clock.advance(0.6)  # 1.5 s: past the first expiry, within the renewed one
    assert clocked.acquire_lease(resource, "B", limit=1, ttl_ms=1000) is None
    assert clocked.renew_lease(lease, 1000)  # until 2.5 s
    clock.advance(1.5)  # 3.0 s: expired, and no one took it over yet
    assert not clocked.renew_lease(lease, 1000)
    taken = clocked.acquire_lease(resource, "B", limit=1, ttl_ms=1000)
    assert taken is not None and taken.epoch > lease.epoch
    assert not clocked.renew_lease(lease, 1000)  # taken over
    assert clocked.renew_lease(taken, 1000)
    clocked.release_lease(taken)  # frees the slot at once, without the clock moving
    third = clocked.acquire_lease(resource, "C", limit=1, ttl_ms=1000)
    assert third is not None and third.epoch > taken.epoch
    assert not clocked.renew_lease(taken, 1000)
    clocked.release_lease(lease)  # releasing a lost lease frees no one else's slot
    assert clocked.acquire_lease(resource, "D", limit=1, ttl_ms=1000) is None


def test_a_fragment_committed_under_its_fence_renews_it(clocked, clock):
    """add_fragment with renew_fence_ms renews the fence in the fragment's commit (an
    upload sending fragments needs no renewals of its own); without it, it does not; a
    refused fragment renews nothing."""
    stream, header_id = new_stream(clocked)
    resource = f"put-media:{stream.arn}"
    lease = clocked.acquire_lease(resource, "A", limit=1, ttl_ms=1000)
    clock.advance(0.9)
    _, created = add(clocked, stream.arn, header_id, 1, "one", fence=lease, renew_fence_ms=1000)
    assert created
    clock.advance(0.6)  # 1.5 s: alive only thanks to the commit (until 1.9 s)
    assert clocked.acquire_lease(resource, "B", limit=1, ttl_ms=1000) is None
    add(clocked, stream.arn, header_id, 2, "two", fence=lease)  # checked, not renewed
    clock.advance(0.5)  # 2.0 s: expired
    with pytest.raises(LeaseLost):
        add(clocked, stream.arn, header_id, 3, "three", fence=lease, renew_fence_ms=1000)
    assert clocked.count_leases(resource) == 0  # the refused commit renewed nothing
    assert clocked.acquire_lease(resource, "B", limit=1, ttl_ms=1000) is not None


def test_count_leases_counts_live_leases_only(clocked, clock):
    """What a node that lost its lease reports: whether anyone holds the slot now."""
    resource = "put-media:stream-z"
    assert clocked.count_leases(resource) == 0
    lease = clocked.acquire_lease(resource, "A", limit=1, ttl_ms=1000)
    assert clocked.count_leases(resource) == 1
    assert clocked.count_leases(resource + "-other") == 0
    clock.advance(1.5)  # expired, its row still there: it counts for nothing
    assert clocked.count_leases(resource) == 0
    clocked.acquire_lease(resource, "B", limit=1, ttl_ms=1000)
    assert clocked.count_leases(resource) == 1
    assert not clocked.renew_lease(lease, 1000)


def test_ping_answers_when_the_store_does(store):
    store.ping(2.0)


# -- 8. fencing --------------------------------------------------------------------------


def test_a_writer_whose_lease_was_taken_over_is_fenced_off(clocked, store_factory, clock):
    """Thread A adds fragments under its 1 s PutMedia lease while thread B (another store
    instance) waits for 20, lets A's lease expire, acquires and adds 5 under its own:
    A is refused with LeaseLost, its renewal fails, none of A's rows was committed after
    B got the lease, and the rows are exactly A's told successes followed by B's 5.
    Three rounds, on three streams: a lease checked outside the commit shows in most."""
    for round_ in range(3):
        stream, header_id = new_stream(clocked, "cam", round_)
        resource = f"put-media:{stream.arn}"
        a_lease = clocked.acquire_lease(resource, "A", limit=1, ttl_ms=1000)
        results = workers.race(store_factory, [workers.fenced_until_lost, workers.take_over],
                               threads=2, clock=clock,
                               args=(stream.arn, header_id, resource, a_lease, clock))
        (a_added, a_end, a_renewed), (b_refused, b_lease, seq_when_taken, b_added) = results

        assert b_refused is None  # while A's lease lived
        assert b_lease is not None and b_lease.epoch > a_lease.epoch
        assert a_end == "LeaseLost" and a_renewed is False
        assert len(a_added) >= 20 and len(b_added) == 5
        # the lease is checked where the row is committed: none of A's after B took over
        assert [f.seq for f in a_added] == list(range(1, seq_when_taken + 1))
        assert [f.seq for f in b_added] == list(range(seq_when_taken + 1, seq_when_taken + 6))
        assert clocked.list_fragments(stream.arn, limit=100_000) == a_added + b_added
        with pytest.raises(LeaseLost):
            add(clocked, stream.arn, header_id, 1, "A again", fence=a_lease)
        assert len(clocked.list_fragments(stream.arn, limit=100_000)) == seq_when_taken + 5
        assert clocked.mark_deleting(stream.arn, None)  # frees "cam" for the next round


def test_a_writer_process_whose_lease_expired_is_fenced_off(store, store_factory):
    """Process A holds a 0.5 s PutMedia lease and adds a fragment; process B is refused
    until the lease expires, then acquires and adds; A's next add raises LeaseLost and
    adds nothing."""
    stream, header_id = new_stream(store)
    resource = f"put-media:{stream.arn}"
    ttl_ms = 500
    a_ready, b_ready = workers.SPAWN.Event(), workers.SPAWN.Event()
    a, b = workers.race(store_factory, [workers.fenced_process_a, workers.fenced_process_b],
                        processes=2,
                        args=(stream.arn, header_id, resource, ttl_ms, a_ready, b_ready))

    assert a["created"] and a["first"].seq == 1
    assert b["refused"] is None  # A's live lease is not taken over
    assert b["granted"] - a["before"] >= ttl_ms / 1000 - 0.002  # only once it expired (ms)
    assert b["lease"].epoch > a["lease"].epoch
    assert a["late"] == "LeaseLost" and a["renewed"] is False
    assert b["seq_when_taken"] == 1
    assert b["created"] and b["fragment"].seq == 2
    assert store.list_fragments(stream.arn, limit=100) == [a["first"], b["fragment"]]


# -- 9. server secrets -------------------------------------------------------------------


def test_a_secret_created_concurrently_is_the_same_for_everyone(store, store_factory):
    """8 writers (4 processes, 4 threads) ask for a secret that does not exist yet: all
    get the same bytes, which a store opened later returns too."""
    results = workers.race(store_factory, workers.secret, processes=4, threads=4,
                           args=("playback-session",))
    assert len(set(results)) == 1
    (value,) = set(results)
    assert isinstance(value, bytes) and len(value) >= 16
    later = store_factory()
    try:
        assert later.secret("playback-session") == value
        assert later.secret("another") != value
    finally:
        later.close()


def test_a_secret_made_by_create_is_made_once_and_kept(store, store_factory):
    """secret(name, create): `create` runs only while the name has no value (a signing key
    and its certificate are made once per deployment), and every store opened later reads
    the first value back."""
    made: list[bytes] = []

    def create() -> bytes:
        made.append(b"key and certificate %d" % len(made))
        return made[-1]

    assert store.secret("signing", create) == b"key and certificate 0"
    assert store.secret("signing", create) == b"key and certificate 0"
    later = store_factory()
    try:
        assert later.secret("signing", create) == b"key and certificate 0"
    finally:
        later.close()
    assert made == [b"key and certificate 0"]


# -- opening ----------------------------------------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_writers_opening_a_new_store_at_once_all_succeed(store_kind, stores_at, tmp_path,
                                                         request):
    """30 rounds: 4 processes and 2 threads open a store at a fresh location at the same
    moment (its creation and migration race): none may fail."""
    stores_at(tmp_path)().close()  # where the racers' own first instances live
    fresh = [stores_at(tmp_path / f"round-{r}") for r in range(30)]
    results = workers.race(stores_at(tmp_path), workers.open_fresh_stores, processes=4,
                           threads=2, args=(fresh,))
    assert results == [[]] * 6


def test_opening_a_new_sqlite_store_waits_while_another_connection_holds_it(store_kind,
                                                                            stores_at,
                                                                            tmp_path):
    """The deterministic form of the race above, for SQLite: a connection holds a write
    lock on the new (empty) database file for 0.3 s; opening the store must wait for it
    (the store's busy timeout is 30 s), not fail."""
    if store_kind != "sqlite":
        pytest.skip("holds the lock with a raw SQLite connection")
    factory = stores_at(tmp_path)
    holder = sqlite3.connect(factory.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.execute, ("ROLLBACK",))
    release.start()
    try:
        store = factory()
        try:
            assert len(store.secret("x")) == 32
        finally:
            store.close()
    finally:
        release.join()
        holder.close()


# -- 7. event configurations and the delivery outbox -------------------------------------


def test_deliveries_are_recorded_with_a_new_fragment_only(store):
    stream, header_id = new_stream(store)
    work = [("notification", '{"metadata": {}}'), ("image-generation", '{"prefix": ""}')]
    fragment, created = add(store, stream.arn, header_id, 1000, "tagged", deliveries=work)
    assert created and store.count_deliveries() == 2
    _, created = add(store, stream.arn, header_id, 1000, "tagged", deliveries=work)  # resend
    assert not created and store.count_deliveries() == 2
    claimed = store.claim_deliveries(10, 60_000)
    assert [(d.arn, d.fragment_number, d.kind, d.event, d.attempts) for d in claimed] == \
        [(stream.arn, fragment.number, kind, event, 0) for kind, event in work]


def test_a_delivery_is_claimed_by_one_worker_until_its_claim_lapses(clocked, store_factory,
                                                                     clock):
    for k in range(6):  # six destinations: one delivery each is claimable at once
        stream, header_id = new_stream(clocked, f"cam{k}", k)
        add(clocked, stream.arn, header_id, 1000 * k, f"f{k}",
            deliveries=[("notification", "{}")])
    other = store_factory(clock)  # another node
    try:
        results: list[list] = [[], []]
        barrier = threading.Barrier(2)

        def claim(i, instance):
            barrier.wait()
            results[i] = instance.claim_deliveries(4, 10_000)
        threads = [threading.Thread(target=claim, args=(i, s))
                   for i, s in enumerate((clocked, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [d.id for r in results for d in r]
        assert len(ids) == len(set(ids)) == 6  # all claimed, none twice
        assert clocked.claim_deliveries(10, 10_000) == []  # all held
        done, failed, *lapsing = sorted(ids)
        clocked.finish_delivery(done)
        clocked.retry_delivery(failed, 30_000, "webhook answered 500")
        clock.advance(10.001)  # the other claims lapse: a worker died
        assert sorted(d.id for d in other.claim_deliveries(10, 60_000)) == lapsing
        clock.advance(20)
        retried = other.claim_deliveries(10, 10_000)
        assert [(d.id, d.attempts) for d in retried] == [(failed, 1)]
        assert clocked.count_deliveries() == 5
    finally:
        other.close()


def test_claims_are_fair_across_destinations(clocked, clock):
    """A destination (a stream's deliveries of one kind) gets one delivery claimed at a
    time, its oldest; none while parked after a failure; fresh work goes before retries."""
    a, a_header = new_stream(clocked, "a", 1)
    b, b_header = new_stream(clocked, "b", 2)
    c, c_header = new_stream(clocked, "c", 3)
    ids = {}
    for k in range(3):
        work = [("notification", "{}")] + ([("image-generation", "{}")] if k == 0 else [])
        add(clocked, a.arn, a_header, 1000 * k, f"a{k}", deliveries=work)
    add(clocked, b.arn, b_header, 0, "b0", deliveries=[("notification", "{}")])
    for d in clocked.claim_deliveries(1000, 0):  # a zero claim: look without holding
        ids.setdefault((d.arn, d.kind), d.id)

    def heads(limit=10):
        return [(d.arn, d.kind, d.attempts) for d in clocked.claim_deliveries(limit, 60_000)]
    assert heads() == [(a.arn, "notification", 0), (a.arn, "image-generation", 0),
                       (b.arn, "notification", 0)]  # one each, oldest destination first
    assert heads() == []  # every destination busy
    assert clocked.count_deliveries() == 5 and clocked.count_deliveries(a.arn) == 4
    assert clocked.count_delivery_streams() == 2
    clocked.retry_delivery(ids[(a.arn, "notification")], 5_000, "webhook timed out")
    clocked.finish_delivery(ids[(b.arn, "notification")])
    add(clocked, b.arn, b_header, 1000, "b1", deliveries=[("notification", "{}")])
    assert heads() == [(b.arn, "notification", 0)]  # a's notifications are parked
    clock.advance(5)
    add(clocked, c.arn, c_header, 0, "c0", deliveries=[("notification", "{}")])
    # a's failed delivery is due again, and still its destination's next; fresh work first
    assert heads(1) == [(c.arn, "notification", 0)]
    retried = clocked.claim_deliveries(10, 60_000)
    assert [(d.id, d.attempts) for d in retried] == [(ids[(a.arn, "notification")], 1)]


def test_configurations_are_kept_replaced_deleted_and_go_with_their_stream(store):
    stream, _ = new_stream(store)
    assert store.get_stream_config(stream.arn, "notification") is None
    store.put_stream_config(stream.arn, "notification", '{"Status": "ENABLED"}')
    store.put_stream_config(stream.arn, "notification", '{"Status": "DISABLED"}')
    store.put_stream_config(stream.arn, "image-generation", '{"Format": "PNG"}')
    assert store.get_stream_config(stream.arn, "notification") == '{"Status": "DISABLED"}'
    store.put_stream_config(stream.arn, "notification", None)
    assert store.get_stream_config(stream.arn, "notification") is None
    store.purge_stream(stream.arn)
    assert store.get_stream_config(stream.arn, "image-generation") is None


# -- signaling channels: the same guarantees as streams -----------------------------------


@pytest.mark.slow  # worker processes racing
def test_channel_names_are_unique_among_channels_not_being_deleted(store, store_factory):
    """6 writers (2 processes, 4 threads) create channel "door" at once: exactly one
    succeeds, with its tags; the 5 others get NameTaken and leave nothing. A stream may
    share the name. Once the channel is marked deleting, its name is free while its row
    stays DELETING (found by ARN only) until purged, with its tags."""
    new_stream(store, "door")
    other = make_channel("door-b", 1)
    store.create_channel(other, {})
    results = workers.race(store_factory, workers.create_named_channel, processes=2,
                           threads=4, args=("door", 10))
    created = [c for c, ok in results if ok]
    assert len(created) == 1 and sum(not ok for _, ok in results) == 5
    (old,) = created
    (winner,) = [w for w, (_, ok) in enumerate(results) if ok]
    assert store.get_channel(name="door") == old
    assert store.get_channel_tags(old.arn) == {"writer": str(winner)}
    for channel, ok in results:
        if not ok:
            assert store.get_channel(arn=channel.arn) is None
            assert store.get_channel_tags(channel.arn) == {}

    assert store.mark_channel_deleting(old.arn, old.version)
    assert not store.mark_channel_deleting(old.arn, None)  # already deleting
    assert store.get_channel(name="door") is None
    assert store.get_channel(arn=old.arn).status == DELETING
    new = make_channel("door", 99)
    store.create_channel(new, {"k": "v"})
    with pytest.raises(NameTaken):
        store.create_channel(make_channel("door", 100), {})
    assert store.list_channels(prefix="", after="", limit=10) == [new, other]
    assert store.list_channels(prefix="door", after="door", limit=10) == [other]
    assert store.list_channels(prefix="door", after="", limit=1) == [new]
    assert store.list_channels(prefix="do_r", after="", limit=10) == []  # no wildcards

    store.purge_channel(old.arn)
    assert store.get_channel(arn=old.arn) is None
    assert store.get_channel_tags(old.arn) == {}
    assert store.get_channel(arn=new.arn) == new
    assert store.get_channel_tags(new.arn) == {"k": "v"}


@pytest.mark.slow  # worker processes racing
def test_channel_updates_and_deletion_are_compare_and_set_on_the_version(store,
                                                                        store_factory):
    """6 writers (2 processes, 4 threads) update with the same expected version: exactly
    one wins and the channel carries its TTL; then all mark it deleting with the version
    they read: exactly one True; then all update it again: all False."""
    channel = make_channel("door")
    store.create_channel(channel, {})
    results = workers.race(store_factory, workers.channel_compare_and_set, processes=2,
                           threads=4, args=(channel.arn, channel.version))
    (winner,) = [w for w, (updated, _, _, _) in enumerate(results) if updated]
    assert all(current == f"v2w{winner}" for _, current, _, _ in results)
    assert sum(deleted for _, _, deleted, _ in results) == 1
    assert sum(late for _, _, _, late in results) == 0
    final = store.get_channel(arn=channel.arn)
    assert (final.version, final.message_ttl_seconds, final.status) == \
        (f"v2w{winner}", 10 + winner, DELETING)
    assert (final.name, final.channel_type, final.creation_time) == \
        (channel.name, channel.channel_type, channel.creation_time)


def test_the_channel_tag_limit_is_checked_and_applied_in_one_step(store, store_factory):
    """8 threads, each with its own store or a shared one, put 10 new keys each on a
    channel with a limit of 50: exactly 5 succeed, and the channel holds exactly their
    tags; overwriting at the limit fits, one key more does not."""
    channel = make_channel("door")
    store.create_channel(channel, {})
    batches = [{f"w{w}-k{j}": f"{w}.{j}" for j in range(10)} for w in range(8)]
    results = workers.race(store_factory, workers.put_channel_tags, threads=8,
                           args=(channel.arn, batches, 50))
    won = [w for w, ok in enumerate(results) if ok]
    assert len(won) == 5 and results.count(False) == 3
    tags = store.get_channel_tags(channel.arn)
    assert tags == {k: v for w in won for k, v in batches[w].items()}
    assert store.put_channel_tags(channel.arn, {k: "again" for k in list(tags)[:10]}, 50)
    assert not store.put_channel_tags(channel.arn, {"one-too-many": "x"}, 50)
    store.delete_channel_tags(channel.arn, list(tags)[:45])
    assert len(store.get_channel_tags(channel.arn)) == 5


# -- media storage: one stream per channel, one channel per stream ------------------------


@pytest.mark.slow  # worker processes racing
def test_two_channels_racing_for_a_stream_one_gets_it(store, store_factory):
    """6 writers (2 processes, 4 threads) map 6 channels to one stream at once: exactly
    one wins and is the stream's channel; the 5 others get MappedElsewhere and have no
    mapping."""
    stream, _ = new_stream(store, "cam")
    channels = [make_channel(f"door-{w}") for w in range(6)]
    for channel in channels:
        store.create_channel(channel, {})
    arns = [channel.arn for channel in channels]
    results = workers.race(store_factory, workers.map_channels_to_one_stream, processes=2,
                           threads=4, args=(arns, stream.arn))
    (winner,) = [w for w, ok in enumerate(results) if ok]
    assert results.count(False) == 5
    assert store.channel_for_stream(stream.arn) == arns[winner]
    assert [store.get_media_storage(arn) for arn in arns] == [
        ("ENABLED", stream.arn) if w == winner else None for w in range(6)]


def test_writers_racing_to_map_a_channel_to_different_streams_one_wins(store,
                                                                       store_factory):
    """6 threads map one channel to 6 streams at once: exactly one wins; the channel is
    mapped to its stream, and the 5 other streams to no channel."""
    streams = [new_stream(store, f"cam-{w}", w)[0] for w in range(6)]
    channel = make_channel("door")
    store.create_channel(channel, {})
    arns = [stream.arn for stream in streams]
    results = workers.race(store_factory, workers.map_one_channel_to_streams, threads=6,
                           args=(channel.arn, arns))
    (winner,) = [w for w, ok in enumerate(results) if ok]
    assert results.count(False) == 5
    assert store.get_media_storage(channel.arn) == ("ENABLED", arns[winner])
    assert [store.channel_for_stream(arn) for arn in arns] == [
        channel.arn if w == winner else None for w in range(6)]


def test_a_mapping_is_kept_changed_and_goes_with_its_channel_or_stream(store):
    """Status changes in place; a mapping is removed on request, when its stream is
    marked deleting and when its channel is purged; nothing maps to a channel or stream
    that is not ACTIVE, nor a channel already mapped to another stream."""
    (cam, _), (yard, _) = new_stream(store, "cam", 1), new_stream(store, "yard", 2)
    door, gate = make_channel("door", 1), make_channel("gate", 2)
    store.create_channel(door, {})
    store.create_channel(gate, {})
    assert store.get_media_storage(door.arn) is None
    assert store.channel_for_stream(cam.arn) is None

    store.set_media_storage(door.arn, "ENABLED", cam.arn)
    store.set_media_storage(door.arn, "DISABLED", cam.arn)
    assert store.get_media_storage(door.arn) == ("DISABLED", cam.arn)
    assert store.channel_for_stream(cam.arn) == door.arn
    with pytest.raises(MappedElsewhere):  # the channel has a stream
        store.set_media_storage(door.arn, "ENABLED", yard.arn)
    with pytest.raises(MappedElsewhere):  # the stream has a channel
        store.set_media_storage(gate.arn, "ENABLED", cam.arn)
    assert store.get_media_storage(gate.arn) is None
    store.set_media_storage(door.arn, "DISABLED", None)
    assert store.get_media_storage(door.arn) is None
    assert store.channel_for_stream(cam.arn) is None

    store.set_media_storage(door.arn, "ENABLED", cam.arn)
    store.set_media_storage(gate.arn, "ENABLED", yard.arn)
    assert store.mark_deleting(yard.arn, None)
    assert store.get_media_storage(gate.arn) is None
    with pytest.raises(MappedElsewhere):  # the stream is being deleted
        store.set_media_storage(gate.arn, "ENABLED", yard.arn)
    with pytest.raises(MappedElsewhere):  # the stream does not exist
        store.set_media_storage(gate.arn, "ENABLED", cam.arn + "0")
    assert store.mark_channel_deleting(door.arn, None)
    with pytest.raises(MappedElsewhere):  # the channel is being deleted
        store.set_media_storage(door.arn, "ENABLED", cam.arn)
    store.purge_channel(door.arn)
    assert store.get_media_storage(door.arn) is None
    assert store.channel_for_stream(cam.arn) is None
    store.set_media_storage(gate.arn, "ENABLED", cam.arn)  # free again
    assert store.channel_for_stream(cam.arn) == gate.arn


# -- IAM users, access keys and policies -----------------------------------------------


@pytest.mark.slow  # worker processes racing
def test_a_users_key_limit_is_checked_and_applied_in_one_step(store, store_factory):
    """8 writers (4 processes, 4 threads) each create a key for one user, limit 2: exactly
    2 succeed and the user holds exactly their keys."""
    store.create_user(IamUser("racer", "AIDARACER", "/", 1.0), 5000)
    results = workers.race(store_factory, workers.create_access_key, processes=4,
                           threads=4, args=("racer",))
    winners = [w for w, created in enumerate(results) if created]
    assert len(winners) == 2
    assert sorted(k.access_key_id for k in store.list_access_keys("racer")) == \
        [f"AKIAW{w:015d}" for w in winners]


def test_a_user_with_keys_or_policies_is_not_deleted(store):
    """Users are unique by name and limited in number; keys and policies belong to an
    existing user, and keep it from deletion (DeleteConflict) until they are gone."""
    store.create_user(IamUser("u", "AIDAU", "/cams/", 1.0), 2)
    with pytest.raises(NameTaken):
        store.create_user(IamUser("u", "AIDAOTHER", "/", 2.0), 5000)
    store.create_user(IamUser("v", "AIDAV", "/", 2.0), 2)
    with pytest.raises(LimitReached):
        store.create_user(IamUser("w", "AIDAW", "/", 3.0), 2)
    assert [u.name for u in store.list_users(after="", limit=10)] == ["u", "v"]
    assert [u.name for u in store.list_users(after="u", limit=10)] == ["v"]
    with pytest.raises(NoSuchUser):
        store.create_access_key(AccessKey("AKIANONE", "nobody", b"s", "Active", 1.0), 2)
    with pytest.raises(NoSuchUser):
        store.put_user_policy("nobody", "p", "{}")
    store.create_access_key(AccessKey("AKIAU1", "u", b"\x00sealed", "Active", 1.0), 2)
    store.put_user_policy("u", "p", "{1}")
    store.put_user_policy("u", "p", "{2}")  # replaces
    assert store.user_policies("u") == {"p": "{2}"}
    assert store.get_access_key("AKIAU1") == AccessKey("AKIAU1", "u", b"\x00sealed",
                                                       "Active", 1.0)
    assert store.set_access_key_status("u", "AKIAU1", "Inactive")
    assert not store.set_access_key_status("v", "AKIAU1", "Active")  # not v's key
    assert store.get_access_key("AKIAU1").status == "Inactive"
    with pytest.raises(UserInUse):
        store.delete_user("u")
    assert store.delete_access_key("u", "AKIAU1") and not store.delete_access_key("u", "AKIAU1")
    with pytest.raises(UserInUse):
        store.delete_user("u")
    assert store.delete_user_policy("u", "p") and not store.delete_user_policy("u", "p")
    store.delete_user("u")
    assert store.get_user("u") is None and store.get_access_key("AKIAU1") is None
    with pytest.raises(NoSuchUser):
        store.delete_user("u")
