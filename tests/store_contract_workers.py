"""Writers for tests/test_store_contract.py, in a module of their own so that processes
started with the "spawn" method can import them.

`race` starts writers in separate processes (each opens its own store on the shared
location) and in threads of this process (half with an instance of their own, half
sharing one), holds them all at one barrier so they really start together, and returns
what each writer's job returned, by writer id: processes first, then threads.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvslite.server.store.metadata import (
    Lease,
    LeaseLost,
    MappedElsewhere,
    MetadataStore,
    NameTaken,
    SignalingChannel,
    Stream,
    StreamNotActive,
)

SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 60.0  # the longest a writer waits for the others before the race is called off

# -- stores ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqliteStores:
    """Opens SqliteMetadataStore instances on one database file. Picklable, so a spawned
    process can open its own instance of the same store."""

    path: str

    @classmethod
    def at(cls, location: Path) -> SqliteStores:
        return cls(str(location / "meta.db"))

    def __call__(self, clock: Callable[[], float] | None = None) -> MetadataStore:
        from kvslite.server.store.sqlite import SqliteMetadataStore
        if clock is None:
            return SqliteMetadataStore(Path(self.path))
        return SqliteMetadataStore(Path(self.path), clock=clock)


@dataclass(frozen=True)
class PostgresStores:
    """Opens PostgresMetadataStore instances on one database: `at` creates a fresh one on
    the session's throwaway server (tests/postgres_server.py), or skips the test where
    PostgreSQL is not installed. Picklable, like SqliteStores."""

    url: str

    @classmethod
    def at(cls, location: Path) -> PostgresStores:
        import postgres_server
        return cls(postgres_server.fresh_database())

    def __call__(self, clock: Callable[[], float] | None = None) -> MetadataStore:
        from kvslite.server.store.postgres import PostgresMetadataStore
        return PostgresMetadataStore(self.url, clock=clock)


class SharedClock:
    """Epoch seconds that only move when the test says so; shared by this process's threads
    and by the processes it is handed to when they start."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._value = SPAWN.Value("d", start)

    def __call__(self) -> float:
        return self._value.value

    def advance(self, seconds: float) -> None:
        with self._value.get_lock():
            self._value.value += seconds


# -- records -----------------------------------------------------------------------------


def make_stream(name: str, serial: int = 1, version: str = "v1") -> Stream:
    return Stream(name=name, arn=f"arn:aws:kinesisvideo:us-east-1:123456789012:stream/"
                                 f"{name}/{serial}",
                  version=version, creation_time=1_700_000_000.0 + serial,
                  data_retention_hours=24, kms_key_id="alias/aws/kinesisvideo")


def make_channel(name: str, serial: int = 1, version: str = "v1") -> SignalingChannel:
    return SignalingChannel(name=name, arn=f"arn:aws:kinesisvideo:us-east-1:123456789012:"
                                           f"channel/{name}/{serial}",
                            channel_type="SINGLE_MASTER", status="ACTIVE",
                            message_ttl_seconds=60, version=version,
                            creation_time=1_700_000_000.0 + serial)


def digest_of(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def fragment_fields(arn: str, header_id: int, producer_ms: int, digest: bytes,
                    blob_key: str) -> dict:
    return {"arn": arn, "producer_ms": producer_ms, "server_ms": producer_ms + 250,
            "duration_ms": 2000, "size": 1000 + producer_ms % 977, "header_id": header_id,
            "blob_key": blob_key, "frames": producer_ms.to_bytes(8, "big"), "digest": digest}


# -- the race ----------------------------------------------------------------------------


@dataclass
class Writer:
    id: int
    in_process: bool
    barrier: object  # a multiprocessing Barrier: process- and thread-safe

    def sync(self) -> None:
        """Wait until every writer of the race gets here."""
        self.barrier.wait(WAIT_S)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S,
                 poll_s: float = 0.002) -> None:
        """Poll `condition`; give up when another writer failed or after `timeout`."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.barrier.broken:
                raise RuntimeError(f"another writer failed while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what}")
            time.sleep(poll_s)


def _run(job, store, writer: Writer, results, args) -> None:
    try:
        writer.sync()
        results.put((writer.id, True, job(store, writer, *args)))
    except BaseException:  # noqa: BLE001 - reported to the test
        writer.barrier.abort()  # no one waits WAIT_S for a writer that is gone
        results.put((writer.id, False, traceback.format_exc()))


def _in_process(factory, clock, job, barrier, results, writer_id, args) -> None:
    _with_store(None, factory, clock, job, results, Writer(writer_id, True, barrier), args)


def _in_thread(store, factory, clock, job, barrier, results, writer_id, args) -> None:
    _with_store(store, factory, clock, job, results, Writer(writer_id, False, barrier), args)


def _with_store(store, factory, clock, job, results, writer: Writer, args) -> None:
    """Run the job on `store`, or on an instance of its own opened here (and closed)."""
    own = store is None
    try:
        if own:
            store = factory(clock)
    except BaseException:  # noqa: BLE001 - reported to the test
        writer.barrier.abort()
        results.put((writer.id, False, traceback.format_exc()))
        return
    try:
        _run(job, store, writer, results, args)
    finally:
        if own:
            store.close()


def race(factory, job: Callable | Sequence[Callable], *, processes: int = 0, threads: int = 0,
         args: tuple = (), clock: SharedClock | None = None) -> list:
    """Run `job(store, writer, *args)` in every writer at once (or job[writer.id], when a
    list); returns the jobs' results by writer id and fails if any job raised."""
    count = processes + threads
    jobs = list(job) if isinstance(job, (list, tuple)) else [job] * count
    assert len(jobs) == count
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_in_process, daemon=True,
                           args=(factory, clock, jobs[i], barrier, results, i, args))
             for i in range(processes)]
    for proc in procs:
        proc.start()
    shared = factory(clock) if threads > 1 else None
    workers = [threading.Thread(target=_in_thread, daemon=True,
                                args=(shared if i % 2 else None, factory, clock,
                                      jobs[processes + i], barrier, results, processes + i,
                                      args))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    got: dict[int, tuple[bool, object]] = {}
    deadline = time.monotonic() + 2 * WAIT_S
    try:
        while len(got) < count:
            try:
                writer_id, ok, value = results.get(timeout=0.2)
                got[writer_id] = (ok, value)
                continue
            except queue.Empty:
                pass
            crashed = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if crashed:
                raise AssertionError(f"writer processes {crashed} died without reporting")
            if time.monotonic() > deadline:
                raise AssertionError(f"writers {sorted(set(range(count)) - set(got))} "
                                     f"never finished")
    finally:
        barrier.abort()  # anything still waiting gives up
        for worker in workers:
            worker.join(WAIT_S)
        for proc in procs:
            proc.join(WAIT_S)
            if proc.is_alive():
                proc.kill()
        if shared is not None:
            shared.close()
    failures = {i: value for i, (ok, value) in got.items() if not ok}
    causes = {i: tb for i, tb in failures.items()
              if "BrokenBarrierError" not in tb and "another writer failed" not in tb}
    failures = causes or failures
    assert not failures, "\n".join(f"writer {i}:\n{tb}" for i, tb in sorted(failures.items()))
    return [got[i][1] for i in range(count)]


# -- jobs: each runs in one writer; what they return must pickle -------------------------


def add_fragments(store, w: Writer, arns: list[str], header_ids: dict[str, int], count: int):
    """`count` new fragments, spread over `arns` in turn; returns [(fragment, created)]."""
    added = []
    for k in range(count):
        arn = arns[(k + w.id) % len(arns)]
        producer_ms = 1_000_000 * (w.id + 1) + 1000 * k
        added.append(store.add_fragment(**fragment_fields(
            arn, header_ids[arn], producer_ms, digest_of(f"writer {w.id} cluster {k}"),
            f"w{w.id}/{producer_ms}.mkv")))
    return added


def add_same_fragments(store, w: Writer, arn: str, header_id: int, keys, shared_ms: int):
    """Every writer adds each (producer_ms, digest) in `keys` at the same moment, as a
    resend racing its original would (each with a blob of its own); then all add a
    fragment at `shared_ms` with content of their own. Returns both lists of
    (fragment, created)."""
    same = []
    for producer_ms, digest in keys:
        w.sync()
        same.append(store.add_fragment(**fragment_fields(
            arn, header_id, producer_ms, digest, f"w{w.id}/{producer_ms}.mkv")))
    w.sync()
    own = store.add_fragment(**fragment_fields(
        arn, header_id, shared_ms, digest_of(f"writer {w.id}'s own"), f"w{w.id}/own.mkv"))
    return same, own


def put_tag_batches(store, w: Writer, rounds: list[tuple[str, list[dict], int]]):
    """Round by round, all writers put their batch (batches[w.id]) at once."""
    outcomes = []
    for arn, batches, max_tags in rounds:
        w.sync()
        outcomes.append(store.put_tags(arn, batches[w.id], max_tags))
    return outcomes


def compare_and_set(store, w: Writer, arn: str, expected: str):
    """update_stream, then mark_deleting, then update_stream again, all writers at once
    in each step, each time with the version they all just read."""
    updated = store.update_stream(arn, expected, version=f"v2-w{w.id}",
                                  media_type=f"video/w{w.id}")
    w.sync()
    current = store.get_stream(arn=arn).version
    w.sync()
    deleted = store.mark_deleting(arn, current)
    w.sync()
    late = store.update_stream(arn, current, version=f"v3-w{w.id}")
    return updated, current, deleted, late


def create_named(store, w: Writer, name: str, first_serial: int):
    stream = make_stream(name, first_serial + w.id)
    try:
        store.create_stream(stream, {"writer": str(w.id), "batch": str(first_serial)})
    except NameTaken:
        return stream, False
    return stream, True


def add_until_refused(store, w: Writer, arn: str, header_id: int, adders: int):
    """Add fragments until the store refuses: [fragments], name of the refusal."""
    added = []
    for k in range(20_000):
        producer_ms = 1_000_000 * (w.id + 1) + 1000 * k
        try:
            fragment, created = store.add_fragment(**fragment_fields(
                arn, header_id, producer_ms, digest_of(f"{w.id}/{k}"), f"w{w.id}/{k}.mkv"))
        except StreamNotActive:
            return added, "StreamNotActive"
        assert created
        added.append(fragment)
        time.sleep(0.001)  # a breath between fragments, so that no writer is starved
    return added, "never refused"


def delete_midway(store, w: Writer, arn: str, header_id: int, adders: int):
    """Once every adder (writers 0..adders-1) has some fragments stored, mark the stream
    DELETING; returns whether that worked and the newest seq stored right after."""
    def all_going():
        stored = store.list_fragments(arn, limit=100_000)
        return all(sum(f.blob_key.startswith(f"w{i}/") for f in stored) >= 3
                   for i in range(adders))
    w.wait_for(all_going, "every adder to store 3 fragments", poll_s=0.005)
    marked = store.mark_deleting(arn, None)
    return marked, store.latest_fragment(arn).seq


def acquire(store, w: Writer, resource: str, limit: int, ttl_ms: int) -> Lease | None:
    return store.acquire_lease(resource, f"holder-{w.id}", limit=limit, ttl_ms=ttl_ms)


def acquire_or_renew(store, w: Writer, resource: str, limit: int, ttl_ms: int,
                     old: list[Lease]):
    """The first len(old) writers try to renew their old lease; the rest acquire."""
    if w.id < len(old):
        return store.renew_lease(old[w.id], ttl_ms)
    return acquire(store, w, resource, limit, ttl_ms)


def fenced_until_lost(store, w: Writer, arn: str, header_id: int, resource: str, lease: Lease,
                      clock: SharedClock):
    """Writer A: add fragments under `lease` until fenced off."""
    added = []
    for k in range(20_000):
        try:
            fragment, _ = store.add_fragment(fence=lease, **fragment_fields(
                arn, header_id, 10_000_000 + k, digest_of(f"A {k}"), f"A/{k}.mkv"))
        except LeaseLost:
            return added, "LeaseLost", store.renew_lease(lease, 60_000)
        added.append(fragment)
        time.sleep(0.0002)  # short, so B mostly finds A inside a call; long enough not
        # to starve B (SQLite's busy handler retries after 1, 2, 5... ms)
    return added, "never fenced", None


def take_over(store, w: Writer, arn: str, header_id: int, resource: str, a_lease: Lease,
              clock: SharedClock, after_seq: int = 20):
    """Writer B: once A has added some fragments, let A's lease expire, acquire, note the
    newest seq, and add fragments under the new lease."""
    w.wait_for(lambda: len(store.list_fragments(arn, limit=after_seq)) >= after_seq,
               f"writer A to add {after_seq} fragments", poll_s=0.001)
    refused = store.acquire_lease(resource, "B", limit=1, ttl_ms=60_000)
    clock.advance(1.5)  # A's lease (1 s) has expired
    lease = store.acquire_lease(resource, "B", limit=1, ttl_ms=60_000)
    seq_when_taken = store.latest_fragment(arn).seq  # A may commit nothing after this
    added = [store.add_fragment(fence=lease, **fragment_fields(
        arn, header_id, 20_000_000 + k, digest_of(f"B {k}"), f"B/{k}.mkv"))[0]
        for k in range(5)]
    return refused, lease, seq_when_taken, added


def fenced_process_a(store, w: Writer, arn: str, header_id: int, resource: str, ttl_ms: int,
                     a_ready, b_ready):
    """Process A: hold the lease, add a fragment, then (once B took over) try again."""
    before = time.time()
    lease = store.acquire_lease(resource, "A", limit=1, ttl_ms=ttl_ms)
    first, created = store.add_fragment(fence=lease, **fragment_fields(
        arn, header_id, 1000, digest_of("A first"), "A/first.mkv"))
    a_ready.set()
    w.wait_for(b_ready.is_set, "process B to take over")
    try:
        store.add_fragment(fence=lease, **fragment_fields(
            arn, header_id, 2000, digest_of("A late"), "A/late.mkv"))
        late = "added"
    except LeaseLost:
        late = "LeaseLost"
    return {"before": before, "lease": lease, "first": first, "created": created,
            "late": late, "renewed": store.renew_lease(lease, ttl_ms)}


def fenced_process_b(store, w: Writer, arn: str, header_id: int, resource: str, ttl_ms: int,
                     a_ready, b_ready):
    """Process B: while A's lease lives, be refused; once it expired, acquire and add."""
    w.wait_for(a_ready.is_set, "process A to get its lease", poll_s=0.001)
    refused = store.acquire_lease(resource, "B", limit=1, ttl_ms=60_000)
    leases = []
    w.wait_for(lambda: leases.append(store.acquire_lease(resource, "B", limit=1,
                                                        ttl_ms=60_000)) or leases[-1],
               "A's lease to expire", timeout=10 * ttl_ms / 1000, poll_s=0.01)
    lease = leases[-1]
    granted = time.time()
    seq_when_taken = store.latest_fragment(arn).seq  # A may commit nothing after this
    b_ready.set()
    fragment, created = store.add_fragment(fence=lease, **fragment_fields(
        arn, header_id, 3000, digest_of("B first"), "B/first.mkv"))
    return {"refused": refused, "lease": lease, "granted": granted, "fragment": fragment,
            "created": created, "seq_when_taken": seq_when_taken}


def secret(store, w: Writer, name: str) -> bytes:
    return store.secret(name)


def open_fresh_stores(store, w: Writer, factories: list):
    """Round by round, all writers open a store at a fresh location at the same moment;
    returns the errors this writer met."""
    errors = []
    for factory in factories:
        w.sync()
        try:
            fresh = factory()
            try:
                fresh.secret("x")
            finally:
                fresh.close()
        except Exception as e:  # noqa: BLE001 - the test reports them
            errors.append(repr(e))
    return errors


def create_named_channel(store, w: Writer, name: str, first_serial: int):
    channel = make_channel(name, first_serial + w.id)
    try:
        store.create_channel(channel, {"writer": str(w.id)})
    except NameTaken:
        return channel, False
    return channel, True


def channel_compare_and_set(store, w: Writer, arn: str, expected: str):
    """As compare_and_set, for a signaling channel."""
    updated = store.update_channel(arn, expected, version=f"v2w{w.id}",
                                   message_ttl_seconds=10 + w.id)
    w.sync()
    current = store.get_channel(arn=arn).version
    w.sync()
    deleted = store.mark_channel_deleting(arn, current)
    w.sync()
    late = store.update_channel(arn, current, version=f"v3w{w.id}")
    return updated, current, deleted, late


def put_channel_tags(store, w: Writer, arn: str, batches: list[dict], max_tags: int):
    w.sync()
    return store.put_channel_tags(arn, batches[w.id], max_tags)


def map_channels_to_one_stream(store, w: Writer, channel_arns: list[str], stream_arn: str):
    """Map this writer's channel to the stream everyone maps: True if it got it."""
    w.sync()
    try:
        store.set_media_storage(channel_arns[w.id], "ENABLED", stream_arn)
    except MappedElsewhere:
        return False
    return True


def map_one_channel_to_streams(store, w: Writer, channel_arn: str, stream_arns: list[str]):
    """Map the channel everyone maps to this writer's stream: True if it got it."""
    w.sync()
    try:
        store.set_media_storage(channel_arn, "ENABLED", stream_arns[w.id])
    except MappedElsewhere:
        return False
    return True


def create_access_key(store, w: Writer, user_name: str) -> bool:
    """One access key for the user, if its limit of 2 allows; whether it got one."""
    from kvslite.server.store.sql_iam import AccessKey, LimitReached

    try:
        store.create_access_key(AccessKey(f"AKIAW{w.id:015d}", user_name, b"sealed",
                                          "Active", 1.0), 2)
        return True
    except LimitReached:
        return False
