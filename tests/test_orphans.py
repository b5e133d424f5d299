"""The orphan collector and the sweeping lease, on real stores: a media folder
(FileBlobStore) with SQLite, and two sweepers sharing one PostgreSQL
(tests/postgres_server.py).

The collector checks a bounded batch of media keys per pass, going on where the last pass
stopped, so a pass costs the same time and memory however many blobs there are. In a
cluster the sweeping lease is renewed during a long pass, so two nodes never sweep at once.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from dataclasses import replace

import pytest
from store_contract_workers import PostgresStores, digest_of, fragment_fields, make_stream

from kvslite.server.archive.retention import Sweeper
from kvslite.server.store.files import FileBlobStore
from kvslite.server.store.sqlite import SqliteMetadataStore

pytestmark = pytest.mark.slow  # sweeps over real stores, PostgreSQL included

HOUR_AGO = time.time() - 3600
STREAM = "streams/1700000000000-cam"


def plant(media, keys: list[str], written: float = HOUR_AGO) -> None:
    """Media files as a crash would leave them: written, no row (and an hour old)."""
    for key in keys:
        path = media / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x1f\x43\xb6\x75")
        os.utime(path, (written, written))


def with_rows(store, keys: list[str], retention_hours: int = 0) -> None:
    """Fragment rows referring to these blob keys, received in 2023."""
    stream = replace(make_stream("cam"), data_retention_hours=retention_hours)
    store.create_stream(stream, {})
    header_id = store.save_header(stream.arn, b"header")
    for ms, key in enumerate(keys):
        store.add_fragment(**fragment_fields(stream.arn, header_id, 1_700_000_000_000 + ms,
                                             digest_of(key), key))


def test_each_pass_checks_one_batch_and_the_next_goes_on_after_it(tmp_path):
    """2,500 blobs, 3 of them a fragment's, and one orphan last in key order: batches of
    1,000 check 1,000, 1,000 and 501 keys, the late orphan goes in the third pass, and the
    fourth starts over (finding only the referenced blobs and the one still in its grace)."""
    media = tmp_path / "media"
    keys = [f"{STREAM}/{1_700_000_000_000 + 1000 * i}-0a1b2c3d.mkv" for i in range(2500)]
    referenced = [keys[0], keys[1234], keys[2499]]
    late_orphan, fresh_orphan = "streams/zz-late/1-dead.mkv", f"{STREAM}/0-fresh.mkv"
    plant(media, keys + [late_orphan])
    plant(media, [fresh_orphan], written=time.time())
    store = SqliteMetadataStore(tmp_path / "kvslite.db")
    with_rows(store, referenced)
    sweeper = Sweeper(store, FileBlobStore(media), interval_s=60, orphan_grace_s=60,
                      orphan_batch=1000)
    try:
        reports = [sweeper.sweep() for _ in range(4)]
    finally:
        store.close()
    assert [r.orphans_checked for r in reports] == [1000, 1000, 502, 4]
    # keys in order: the fresh orphan ("0-fresh" sorts first), then the 2,500, then the late
    assert [len(r.orphans) for r in reports] == [998, 999, 501, 0]
    assert reports[0].orphans[0] == keys[1] and reports[2].orphans[-1] == late_orphan
    assert late_orphan not in reports[0].orphans + reports[1].orphans
    left = sorted(p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file())
    assert left == sorted(referenced + [fresh_orphan])
    assert not (media / "streams/zz-late").exists()  # its emptied folder went with it


def peak_bytes_of(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_pass_holds_a_batch_of_keys_not_the_whole_listing(tmp_path):
    """Over 6,000 blobs, a pass in batches of 200 peaks under 200 KB of Python memory
    (listing every key at once took 1.7 MB), and 30 passes check them all."""
    media = tmp_path / "media"
    plant(media, [f"{STREAM}-{i % 3}/{1_700_000_000_000 + 1000 * i}-0a1b2c3d.mkv"
                  for i in range(6000)])
    store = SqliteMetadataStore(tmp_path / "kvslite.db")
    sweeper = Sweeper(store, FileBlobStore(media), interval_s=60, orphan_grace_s=60,
                      orphan_batch=200)
    reports = []
    try:
        peak = peak_bytes_of(lambda: reports.append(sweeper.sweep()))
        reports += [sweeper.sweep() for _ in range(29)]
    finally:
        store.close()
    assert reports[0].orphans_checked == 200
    assert peak < 200_000, peak
    assert sum(len(r.orphans) for r in reports) == 6000
    assert not any(p.is_file() for p in media.rglob("*"))


class SlowFileBlobStore(FileBlobStore):
    """A media folder on slow storage: every delete takes DELETE_S, and says who did it."""

    DELETE_S = 0.05

    def __init__(self, root):
        super().__init__(root)
        self.deleted_by: dict[str, list[str]] = {}
        self.deleting = threading.Event()

    def delete(self, key: str, *, prune: bool = False) -> None:
        self.deleting.set()
        time.sleep(self.DELETE_S)
        super().delete(key, prune=prune)
        self.deleted_by.setdefault(threading.current_thread().name, []).append(key)


def test_a_pass_longer_than_the_lease_renews_it_so_no_other_node_sweeps_meanwhile(
        tmp_path, postgres_url):
    """Two nodes' sweepers on one PostgreSQL, a 2 s sweeping lease, and a pass that takes
    about 3 s (60 fragments past retention, on slow storage): the first renews its lease
    during the pass, so the second, trying all along, never gets it and never sweeps."""
    stores = PostgresStores.at(tmp_path)
    keys = [f"{STREAM}/{i}.mkv" for i in range(60)]
    plant(tmp_path / "media", keys)
    blobs = SlowFileBlobStore(tmp_path / "media")
    opened = [stores(), stores()]
    first, second = (Sweeper(store, blobs, interval_s=60, orphan_grace_s=3600, batch=4,
                             shared=True, lease_ttl_s=2.0) for store in opened)
    reports, tries = [], []

    def keep_trying():
        while passing.is_alive():
            tries.append(second.sweep())
            time.sleep(0.05)

    try:
        with_rows(opened[0], keys, retention_hours=1)
        passing = threading.Thread(target=lambda: reports.append(first.sweep()), name="first")
        trying = threading.Thread(target=keep_trying, name="second")
        passing.start()
        assert blobs.deleting.wait(10)  # the first is sweeping: now the second tries
        trying.start()
        passing.join(30)
        trying.join(30)
    finally:
        for store in opened:
            store.close()
    assert [r.expired for r in reports] == [60]
    assert sorted(blobs.deleted_by["first"]) == sorted(keys)
    assert "second" not in blobs.deleted_by
    assert len(tries) >= 10 and all(r.expired == 0 for r in tries)  # ~3 s of trying


def test_a_pass_that_outlived_its_lease_stops_at_the_next_batch(tmp_path, postgres_url,
                                                                caplog):
    """A batch that takes longer than the whole lease (40 slow deletes, 2 s, against a 1 s
    lease): the lease cannot be renewed after it, so the pass stops there, one batch in,
    and a later pass finishes the job."""
    store = PostgresStores.at(tmp_path)()
    keys = [f"{STREAM}/{i}.mkv" for i in range(60)]
    plant(tmp_path / "media", keys)
    sweeper = Sweeper(store, SlowFileBlobStore(tmp_path / "media"), interval_s=60,
                      orphan_grace_s=3600, batch=40, shared=True, lease_ttl_s=1.0)
    try:
        with_rows(store, keys, retention_hours=1)
        assert sweeper.sweep().expired == 40
        assert "sweeping lease lost: stopping this pass" in caplog.text
        assert sweeper.sweep().expired == 20
    finally:
        store.close()
