"""Durable ingest end to end, against a real `kvslite serve`: connection limits taken in
one step (leases), honest PutMedia acks (a resend is deduplicated only when its bytes are
the same), DeleteStream while a producer is still sending, and a full disk.

Counts are exact: 30 GetMedia started together admit exactly 3; two PutMedia started
together admit exactly 1. The server's own files are inspected from outside: media under
<data-dir>/media and rows in <data-dir>/kvslite.db (opened read-only). The full disk is a
small tmpfs mounted for the test (root only; the test is skipped where mounting is refused)
and filled to a precise number of free bytes with a preallocated filler file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from conftest import ServerProcess
from engines import need
from kvs_media import PutMediaConnection, mkv_events, put_mkv

from kvslite.media import mkv, synthetic

START_MS = (int(time.time()) - 3600) * 1000  # an old recording, on whole seconds
GET_MEDIA_IDLE_S = 10  # GetMedia ends by itself after this long without a new fragment
KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def kvs(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


# -- helpers --------------------------------------------------------------------------

def persisted(acks: list[dict]) -> list[dict]:
    return [a for a in acks if a["EventType"] == "PERSISTED"]


def until(condition, timeout: float, interval: float = 0.05):
    """Poll `condition` until it returns something truthy (returned) or `timeout` passes
    (its last value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def header_bytes(video) -> bytes:
    return mkv.write_header(synthetic.stream_header(video))


def cluster_bytes(cluster: mkv.Cluster) -> bytes:
    return mkv.write_cluster(cluster)[0]


def retimed(cluster: mkv.Cluster, timecode: int) -> mkv.Cluster:
    """The cluster's frames moved to start at `timecode` (a camera whose clock reset)."""
    shift = timecode - cluster.timecode
    return mkv.Cluster(timecode, [mkv.Frame(f.track_number, f.timecode + shift, f.keyframe,
                                            f.payload) for f in cluster.frames])


def payloads(cluster: mkv.Cluster) -> list[bytes]:
    return [f.payload for f in cluster.frames]


def stored_cluster(archived, stream: str, number: str) -> mkv.Cluster:
    """The one cluster GetMediaForFragmentList returns for fragment `number`."""
    data = archived.get_media_for_fragment_list(StreamName=stream,
                                                Fragments=[number])["Payload"].read()
    events = mkv_events(data)
    clusters = [e for e in events if isinstance(e, mkv.Cluster)]
    tags = dict(t for e in events if isinstance(e, mkv.Tags) for t in e.tags)
    assert len(clusters) == 1 and tags["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == number
    return clusters[0]


def listed(archived, stream: str) -> list[dict]:
    pages = archived.get_paginator("list_fragments").paginate(StreamName=stream)
    return [f for page in pages for f in page["Fragments"]]


def stream_dirs(data_dir: Path, name: str) -> list[Path]:
    """The stream's media folders (media/streams/<creation-ms>-<name>), any incarnation."""
    root = data_dir / "media" / "streams"
    pattern = re.compile(rf"\d+-{re.escape(name)}")
    return [p for p in root.glob("*") if pattern.fullmatch(p.name)] if root.exists() else []


def stream_files(data_dir: Path, name: str) -> list[Path]:
    return sorted(p for d in stream_dirs(data_dir, name) for p in d.rglob("*") if p.is_file())


def temp_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "media").rglob("*.tmp"))


def query(data_dir: Path, sql: str, *params) -> list[tuple]:
    """A read-only look at the server's SQLite database."""
    conn = sqlite3.connect(f"file:{data_dir / 'kvslite.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def leases_held(data_dir: Path, kind: str, arn: str) -> int:
    """Live lease rows of one kind ("get-media", "put-media") on a stream."""
    return query(data_dir, "SELECT count(*) FROM leases WHERE resource = ? AND expires_ms > ?",
                 f"{kind}:{arn}", int(time.time() * 1000))[0][0]


def arn_of(kvs, name: str) -> str:
    return kvs.describe_stream(StreamName=name)["StreamInfo"]["StreamARN"]


def open_upload(port: int, stream: str, timeout: float = 10) -> PutMediaConnection:
    """A PutMedia connection whose response status has arrived."""
    conn = PutMediaConnection(port, stream)
    assert conn.started.wait(timeout), "no response to PutMedia"
    if conn.status != 200:  # an error response: read its body too
        assert conn.closed.wait(timeout), "the PutMedia error response did not end"
    return conn


def hang_up(conn: PutMediaConnection) -> None:
    """Close the connection for real (the reader's file object keeps the socket open)."""
    try:
        conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the server
    conn.close()


def error_type(conn: PutMediaConnection) -> str | None:
    return getattr(conn, "headers", {}).get("x-amzn-errortype")


# -- 1. GetMedia: 3 per stream, checked and taken in one step ---------------------------

@pytest.mark.slow
def test_30_concurrent_get_media_admit_exactly_3_and_closing_frees_the_slots(server, kvs,
                                                                             h264):
    name = "dur-gm-30"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    assert len(persisted(put_mkv(server.port, name, synthetic.to_mkv(h264, START_MS)))) == 4
    arn = arn_of(kvs, name)
    media = server.client("kinesis-video-media", max_pool_connections=64)
    earliest = {"StartSelectorType": "EARLIEST"}
    barrier = threading.Barrier(30, timeout=20)
    admitted, refused, failed = [], [], []

    def call():
        barrier.wait()
        try:
            admitted.append(media.get_media(StreamName=name, StartSelector=earliest))
        except ClientError as e:
            refused.append(e.response)
        except Exception as e:  # noqa: BLE001 - any other outcome fails the test below
            failed.append(repr(e))

    threads = [threading.Thread(target=call, daemon=True) for _ in range(30)]
    opened = []
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        admitted_at = time.monotonic()
        opened += admitted
        assert not failed, failed
        assert (len(admitted), len(refused)) == (3, 27)
        assert {(r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"])
                for r in refused} == {("ConnectionLimitExceededException", 400)}
        for response in admitted:  # each admitted one is really streaming the archive
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
            assert response["Payload"]._raw_stream.read1(65536)
        assert leases_held(server.data_dir, "get-media", arn) == 3

        for response in admitted:
            response["Payload"].close()
        opened.clear()

        def admit_one():
            try:
                response = media.get_media(StreamName=name, StartSelector=earliest)
            except ClientError as e:
                assert e.response["Error"]["Code"] == "ConnectionLimitExceededException"
                return None
            opened.append(response)
            return response

        # the server notices each disconnect and releases its slot: 3 are admitted again
        assert until(lambda: admit_one() and len(opened) == 3, timeout=5, interval=0.1), \
            f"only {len(opened)} GetMedia admitted within 5 s of closing the first 3"
        # ... well before the first three would have ended by themselves (idle for 10 s)
        assert time.monotonic() - admitted_at < GET_MEDIA_IDLE_S - 1
        with pytest.raises(ClientError) as e:  # and the limit is exactly 3 again
            media.get_media(StreamName=name, StartSelector=earliest)
        assert e.value.response["Error"]["Code"] == "ConnectionLimitExceededException"
    finally:
        for response in opened:
            response["Payload"].close()
    assert until(lambda: leases_held(server.data_dir, "get-media", arn) == 0, timeout=5), \
        "closed GetMedia connections kept their leases"


# -- 2. PutMedia: one per stream ------------------------------------------------------

def test_two_put_media_started_together_admit_exactly_one(server, kvs, archived, h264):
    name = "dur-pm-one"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    arn = arn_of(kvs, name)
    header = header_bytes(h264)
    numbers: list[str] = []
    for round_ in range(3):  # each round: two uploads race; the winner uploads 4 fragments
        assert until(lambda: leases_held(server.data_dir, "put-media", arn) == 0, timeout=5), \
            "the previous upload's slot was not released after it ended"
        barrier = threading.Barrier(2, timeout=10)
        conns: list[PutMediaConnection] = []

        def start(barrier=barrier, conns=conns):
            barrier.wait()
            conns.append(PutMediaConnection(server.port, name))

        threads = [threading.Thread(target=start, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        try:
            assert len(conns) == 2 and all(c.started.wait(10) for c in conns)
            assert all(c.closed.wait(10) for c in conns if c.status != 200)
            assert sorted(c.status for c in conns) == [200, 400], \
                [(c.status, c.error_body) for c in conns]
            winner = next(c for c in conns if c.status == 200)
            loser = next(c for c in conns if c.status == 400)
            assert error_type(loser) == "ConnectionLimitExceededException"
            assert "PutMedia" in json.loads(loser.error_body)["message"]

            clusters = synthetic.clusters(h264, START_MS + round_ * 10_000)
            winner.send(header + b"".join(cluster_bytes(c) for c in clusters[:3]))
            acks = winner.wait_for("PERSISTED", count=3)
            late = open_upload(server.port, name)  # still open: a third is refused too
            hang_up(late)
            assert (late.status, error_type(late)) == (400, "ConnectionLimitExceededException")
            winner.send(cluster_bytes(clusters[3]))
            winner.finish()
            acks += winner.all_acks()
        finally:
            for c in conns:
                hang_up(c)
        assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 4, acks
        numbers += [a["FragmentNumber"] for a in persisted(acks)]
    # every winner's fragments were archived: 3 rounds of 4 fragments
    assert sorted(f["FragmentNumber"] for f in listed(archived, name)) == numbers
    assert len(set(numbers)) == 12
    assert until(lambda: leases_held(server.data_dir, "put-media", arn) == 0, timeout=5)


def test_a_new_put_media_is_accepted_once_the_previous_one_ends(server, kvs, archived, h264):
    name = "dur-pm-next"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    first = open_upload(server.port, name)
    try:
        assert first.status == 200
        first.send(synthetic.to_mkv(h264, START_MS))
        assert len(persisted(first.wait_for("PERSISTED", count=3))) == 3
        second = open_upload(server.port, name)
        hang_up(second)
        assert (second.status, error_type(second)) == (400, "ConnectionLimitExceededException")
        first.finish()
        assert len(persisted(first.all_acks())) == 1
    finally:
        hang_up(first)

    def accepted():
        conn = open_upload(server.port, name)
        if conn.status == 200:
            return conn
        assert error_type(conn) == "ConnectionLimitExceededException"
        hang_up(conn)
        return None

    conn = until(accepted, timeout=5, interval=0.1)
    assert conn, "the finished upload's slot was not released within 5 s"
    try:
        conn.send(synthetic.to_mkv(h264, START_MS + 10_000))
        conn.finish()
        assert len(persisted(conn.all_acks())) == 4
    finally:
        hang_up(conn)
    assert len(listed(archived, name)) == 8


# -- 3. Honest acks: dedupe only a true resend ----------------------------------------

def test_a_true_resend_is_acked_with_its_number_and_stored_once(server, kvs, archived, h264):
    name = "dur-ack-resend"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    clusters = synthetic.clusters(h264, START_MS)
    first = persisted(put_mkv(server.port, name, synthetic.to_mkv(h264, START_MS)))
    numbers = [a["FragmentNumber"] for a in first]
    assert len(set(numbers)) == 4
    files = stream_files(server.data_dir, name)
    assert len(files) == 4

    # the producer reconnects and resends fragments 2 and 3, byte for byte
    resend = header_bytes(h264) + cluster_bytes(clusters[1]) + cluster_bytes(clusters[2])
    acks = put_mkv(server.port, name, resend)
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"] * 2, acks
    assert [(a["FragmentTimecode"], a["FragmentNumber"]) for a in persisted(acks)] == \
        [(clusters[1].timecode, numbers[1]), (clusters[2].timecode, numbers[2])]
    assert sorted(f["FragmentNumber"] for f in listed(archived, name)) == numbers
    assert stream_files(server.data_dir, name) == files
    assert payloads(stored_cluster(archived, name, numbers[1])) == payloads(clusters[1])


def test_same_producer_timestamp_with_other_frames_is_a_new_fragment(server, kvs, archived,
                                                                     h264):
    """A camera whose clock reset sends a different GOP with a timecode already archived:
    not a resend, so it is stored as its own fragment with its own number."""
    name = "dur-ack-clash"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    clusters = synthetic.clusters(h264, START_MS)
    numbers = [a["FragmentNumber"] for a in
               persisted(put_mkv(server.port, name, synthetic.to_mkv(h264, START_MS)))]
    assert len(numbers) == 4
    files = stream_files(server.data_dir, name)

    other = retimed(clusters[2], clusters[0].timecode)  # GOP 3's frames at GOP 1's time
    assert other.timecode == clusters[0].timecode and payloads(other) != payloads(clusters[0])
    acks = put_mkv(server.port, name, header_bytes(h264) + cluster_bytes(other))
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"], acks
    new = acks[-1]["FragmentNumber"]
    assert acks[-1]["FragmentTimecode"] == clusters[0].timecode
    assert new not in numbers and new > max(numbers)

    fragments = listed(archived, name)
    assert len(fragments) == 5
    assert sorted(f["FragmentNumber"] for f in fragments) == sorted([*numbers, new])
    at_start = [f["FragmentNumber"] for f in fragments
                if round(f["ProducerTimestamp"].timestamp() * 1000) == clusters[0].timecode]
    assert sorted(at_start) == sorted([numbers[0], new])
    assert len(stream_files(server.data_dir, name)) == len(files) + 1
    # each number reads back its own frames
    assert payloads(stored_cluster(archived, name, numbers[0])) == payloads(clusters[0])
    assert payloads(stored_cluster(archived, name, new)) == payloads(clusters[2])
    assert payloads(stored_cluster(archived, name, numbers[2])) == payloads(clusters[2])

    # and resending the clashing fragment itself is now a true resend
    again = put_mkv(server.port, name, header_bytes(h264) + cluster_bytes(other))
    assert [a.get("FragmentNumber") for a in persisted(again)] == [new]
    assert len(listed(archived, name)) == 5


def test_two_clusters_with_one_timecode_in_one_upload_are_two_fragments(server, kvs,
                                                                        archived, h264):
    name = "dur-ack-twice"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    clusters = synthetic.clusters(h264, START_MS)
    a, b = clusters[0], retimed(clusters[1], clusters[0].timecode)
    body = header_bytes(h264) + cluster_bytes(a) + cluster_bytes(b) + cluster_bytes(a)
    acks = put_mkv(server.port, name, body)
    assert [x["EventType"] for x in acks] == ["RECEIVED", "PERSISTED"] * 3, acks
    done = persisted(acks)
    assert {x["FragmentTimecode"] for x in done} == {a.timecode}
    first, second, third = (x["FragmentNumber"] for x in done)
    assert first < second  # two fragments, two numbers, in order
    assert third == first  # the same cluster again (same bytes) is the first one
    assert sorted(f["FragmentNumber"] for f in listed(archived, name)) == [first, second]
    assert len(stream_files(server.data_dir, name)) == 2
    assert payloads(stored_cluster(archived, name, first)) == payloads(a)
    assert payloads(stored_cluster(archived, name, second)) == payloads(clusters[1])


# -- 4. DeleteStream while a producer is sending ---------------------------------------

def live_clusters(video, start_ms: int):
    """The video's GOPs over and over, timecodes always increasing."""
    loop = 0
    while True:
        yield from synthetic.clusters(video, start_ms + loop * video.duration_ms)
        loop += 1


def keep_sending(conn: PutMediaConnection, clusters, limit: int = 40) -> int:
    """Send clusters until the server ends the upload (or `limit` were sent)."""
    sent = 0
    while sent < limit and not conn.closed.is_set():
        try:
            conn.send(cluster_bytes(next(clusters)))
        except OSError:
            break  # the server closed the upload
        sent += 1
        conn.closed.wait(0.1)
    return sent


def leftovers(server, name: str, arn: str) -> dict:
    """What is left of a stream: its media folders and files, and its rows."""
    return {
        "folders": [str(d) for d in stream_dirs(server.data_dir, name)],
        "files": [str(p) for p in stream_files(server.data_dir, name)],
        "rows": query(server.data_dir,
                      "SELECT 'fragment' FROM fragments WHERE arn = ? UNION ALL "
                      "SELECT 'header' FROM headers WHERE arn = ? UNION ALL "
                      "SELECT 'stream' FROM streams WHERE arn = ?", arn, arn, arn),
    }


def wait_gone(server, name: str, arn: str, timeout: float = 5) -> dict:
    """Poll until nothing of the stream is left; returns what is left after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(server, name, arn)
        if not any(left.values()):
            return {}
        if time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def start_upload_with_fragments(server, name: str, video, count: int):
    """A live upload of `count` PERSISTED fragments; returns (conn, acks, next clusters)."""
    clusters = live_clusters(video, START_MS)
    conn = open_upload(server.port, name)
    assert conn.status == 200
    # known-size clusters: each is complete (and acked) with its last byte
    conn.send(header_bytes(video) + b"".join(cluster_bytes(next(clusters))
                                             for _ in range(count)))
    acks = conn.wait_for("PERSISTED", count=count)
    assert len(persisted(acks)) == count, acks
    assert len(stream_files(server.data_dir, name)) == count
    return conn, acks, clusters


def assert_ended_with_4008(acks: list[dict], persisted_before: int) -> None:
    errors = [a for a in acks if a["EventType"] == "ERROR"]
    assert errors == [acks[-1]], acks
    assert (errors[0]["ErrorId"], errors[0]["ErrorCode"]) == (4008, "STREAM_NOT_ACTIVE"), acks
    assert len(persisted(acks)) == persisted_before  # nothing completed after DeleteStream


# The sweeper's removal of a deleted stream's folder races with the blob write of a
# PutMedia still sending to it: every outcome must be 4008 and nothing left behind.


def test_delete_stream_during_put_media_ends_the_upload_with_4008(server, kvs, h264):
    """The producer keeps sending right after DeleteStream, racing the sweeper that removes
    the stream; the two tests after this one pin the outcomes of that race down."""
    name = "dur-del-now"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    arn = arn_of(kvs, name)
    conn, acks, clusters = start_upload_with_fragments(server, name, h264, 3)
    try:
        kvs.delete_stream(StreamARN=arn)
        assert keep_sending(conn, clusters) >= 1
        acks += conn.all_acks()
    finally:
        hang_up(conn)
    assert_ended_with_4008(acks, 3)
    left = wait_gone(server, name, arn, timeout=3)
    assert not left, left
    assert until(lambda: leases_held(server.data_dir, "put-media", arn) == 0, timeout=5)
    with pytest.raises(ClientError) as e:
        kvs.describe_stream(StreamName=name)
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_fragment_after_the_deleted_stream_was_swept_leaves_nothing(server, kvs, h264):
    name = "dur-del-swept"
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    arn = arn_of(kvs, name)
    conn, acks, clusters = start_upload_with_fragments(server, name, h264, 2)
    try:
        kvs.delete_stream(StreamARN=arn)
        assert wait_gone(server, name, arn) == {}  # the sweeper finished the deletion
        assert keep_sending(conn, clusters) >= 1  # then the producer's next fragment comes
        acks += conn.all_acks()
    finally:
        hang_up(conn)
    assert_ended_with_4008(acks, 2)
    assert wait_gone(server, name, arn, timeout=2) == {}


class FolderWatch:
    """Lists a stream's media folder as fast as it can, from the test process, to tell
    whether the folder was removed while a blob was still being written into it: the blob's
    temporary file was seen, and the folder vanished before the finished blob (the same
    name without the leading dot and `.tmp`) ever appeared."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tmp_seen = threading.Event()
        self.removed_mid_write: bool | None = None  # the verdict, once the folder is gone
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        finished_name, finished_seen = None, False
        while not self.stop.is_set():
            try:
                names = os.listdir(self.folder)
            except FileNotFoundError:
                self.removed_mid_write = finished_name is not None and not finished_seen
                return
            if finished_name is None:
                temps = [n for n in names if n.startswith(".") and n.endswith(".tmp")]
                if temps:
                    finished_name = temps[0][1:-len(".tmp")]
                    self.tmp_seen.set()
            elif finished_name in names:
                finished_seen = True
            time.sleep(0.0002)  # leave the CPUs to the server

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class PreparedDelete:
    """DeleteStream as a raw request on a connection opened beforehand, so it goes out the
    moment the test fires it."""

    def __init__(self, port: int, arn: str):
        body = json.dumps({"StreamARN": arn}).encode()
        self.request = (f"POST /deleteStream HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                        f"connection: close\r\n\r\n").encode() + body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def fire(self) -> bytes:
        """Send it; returns the response's status line."""
        try:
            self.sock.sendall(self.request)
            return self.sock.makefile("rb").readline()
        finally:
            self.sock.close()


@pytest.mark.slow
def test_delete_stream_while_a_fragment_is_being_written_is_4008(server, kvs, h264):
    """DeleteStream lands while the server writes a big fragment's blob (the test sees its
    temporary file appear), and the sweeper removes the stream's folder under the write.
    An attempt where the write finished first proves nothing and is tried again."""
    for attempt in range(5):
        name = f"dur-del-mid-{attempt}"
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
        arn = arn_of(kvs, name)
        conn, acks, _ = start_upload_with_fragments(server, name, h264, 1)
        [folder] = stream_dirs(server.data_dir, name)
        delete = PreparedDelete(server.port, arn)
        watch = FolderWatch(folder)
        try:
            conn.send(cluster_bytes(opaque_cluster(START_MS + 60_000, 45 * MiB, seed=attempt)))
            assert watch.tmp_seen.wait(10), "the server never wrote the fragment's blob"
            assert delete.fire().startswith(b"HTTP/1.1 200")
            conn.finish()
            acks += conn.all_acks()
            assert until(lambda w=watch: w.removed_mid_write is not None, timeout=5), \
                "the deleted stream's folder was never removed"
        finally:
            watch.close()
            hang_up(conn)
        if watch.removed_mid_write:  # the race was set up: the folder went mid-write
            assert_ended_with_4008(acks, 1)
            assert wait_gone(server, name, arn) == {}
            return
    pytest.skip("the blob write always finished before the folder was removed")


# -- 5. A full disk -------------------------------------------------------------------
#
# Measured on the 32 MiB tmpfs (free space counts whole 4 KiB pages; SQLite's WAL grows by
# 4120-byte frames): with 0-8 KiB free even the PutMedia lease cannot be written (HTTP 507),
# from 16 to ~128 KiB a 96 KiB fragment is refused (5001), from ~136 KiB it is PERSISTED.
# The tests use amounts far from those edges, or accept every honest outcome.

class SmallDisk:
    """A tmpfs holding a server's whole data dir, and a preallocated filler file that takes
    all but a chosen number of bytes."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def leave(self, free: int) -> None:
        """Grow or shrink the filler so that exactly `free` bytes stay free (retried if the
        server's last write of an upload lands meanwhile)."""
        assert free % 4096 == 0
        for _ in range(20):
            fd = os.open(self.filler, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                target = size + self.free() - free
                assert target >= 0, f"cannot leave {free} bytes free: only {self.free()} are"
                if target < size:
                    os.ftruncate(fd, target)
                elif target > size:
                    os.posix_fallocate(fd, 0, target)  # allocated, not a sparse hole
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)
            if self.free() == free:
                return
            time.sleep(0.01)
        raise AssertionError(f"could not leave {free} bytes free ({self.free()} are)")

    def remove_filler(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs",
                           str(root)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        need(False, f"a small tmpfs for the full-disk tests (mounting needs root): "
                    f"{(done.stderr or done.stdout).strip()}")
    try:
        yield SmallDisk(root)
    finally:
        if subprocess.run(["umount", str(root)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(root)], check=True)


@pytest.fixture
def full_disk_server(small_disk, tmp_path):
    """A server whose --data-dir is the small tmpfs (its log stays off it)."""
    server = ServerProcess(small_disk.root)
    server.log_path = tmp_path / "full-disk-server.log"
    server.start()
    try:
        yield server, small_disk
    finally:
        server.stop()


def post_json(server, path: str, body: dict) -> tuple[int, dict, dict]:
    """A raw control-plane call: (status, lower-case headers, JSON body), whatever the
    status."""
    request = urllib.request.Request(f"{server.endpoint}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (response.status, {k.lower(): v for k, v in response.headers.items()},
                    json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as e:
        return (e.code, {k.lower(): v for k, v in e.headers.items()},
                json.loads(e.read() or b"{}"))


def assert_out_of_space(status_headers_body) -> None:
    status, headers, body = status_headers_body
    assert status == 507, status_headers_body
    assert headers.get("x-amzn-errortype") == "InsufficientStorageException"
    assert "out of disk space" in body["message"], body


def opaque_cluster(timecode: int, size: int, seed: int) -> mkv.Cluster:
    """A fragment of `size` opaque bytes in frames of at most 8 MiB, 40 ms apart, the
    first a keyframe (the server stores frames byte for byte; it does not decode them)."""
    chunk = 8 * MiB
    payload = (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return mkv.Cluster(timecode, [mkv.Frame(1, timecode + 40 * i, i == 0, payload[at:at + chunk])
                                  for i, at in enumerate(range(0, size, chunk))])


def upload(server, stream: str, body: bytes) -> tuple[int, list[dict]]:
    """(HTTP status, acks) of one PutMedia sending `body`; a refusal must be a 507."""
    conn = open_upload(server.port, stream)
    try:
        if conn.status != 200:
            assert (conn.status, error_type(conn)) == (507, "InsufficientStorageException"), \
                (conn.status, conn.error_body)
            assert "out of disk space" in json.loads(conn.error_body)["message"]
            return conn.status, []
        conn.send(body)
        conn.finish()
        return 200, conn.all_acks()
    finally:
        hang_up(conn)


def settled_upload(server, stream: str, body: bytes) -> tuple[int, list[dict]]:
    """upload(), then wait until its slot is released: no write of it is still in flight
    when the test changes the free space."""
    status, acks = upload(server, stream, body)
    arn = query(server.data_dir, "SELECT arn FROM streams WHERE name = ?", stream)[0][0]
    assert until(lambda: leases_held(server.data_dir, "put-media", arn) == 0, timeout=5), \
        "the upload kept its slot on the stream after it ended"
    return status, acks


def assert_every_persisted_fragment_reads_back(archived, stored: dict) -> None:
    """`stored`: stream -> {fragment number acked PERSISTED: the frames sent}."""
    for stream, fragments in stored.items():
        assert sorted(f["FragmentNumber"] for f in listed(archived, stream)) == \
            sorted(fragments), stream
        for number, frames in fragments.items():
            assert payloads(stored_cluster(archived, stream, number)) == frames


@pytest.mark.slow
def test_full_disk_answers_507_and_error_5001_and_recovers(full_disk_server, h264):
    server, disk = full_disk_server
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    kvs.create_stream(StreamName="disk-a", DataRetentionInHours=1)
    header = header_bytes(h264)
    clusters = synthetic.clusters(h264, START_MS)
    _, acks = settled_upload(server, "disk-a", header + cluster_bytes(clusters[0]))
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"], acks
    stored = {acks[-1]["FragmentNumber"]: payloads(clusters[0])}  # all acked PERSISTED

    # not one page free: every metadata write fails with 507, saying why
    disk.leave(0)
    assert_out_of_space(post_json(server, "/createStream",
                                  {"StreamName": "disk-b", "DataRetentionInHours": 1}))
    assert_out_of_space(post_json(server, "/tagStream",
                                  {"StreamName": "disk-a", "Tags": {"k": "v"}}))
    for call, params in [(kvs.create_stream, {"StreamName": "disk-b"}),
                         (kvs.tag_stream, {"StreamName": "disk-a", "Tags": {"k": "v"}})]:
        with pytest.raises(ClientError) as e:
            call(**params)
        assert (e.value.response["Error"]["Code"],
                e.value.response["ResponseMetadata"]["HTTPStatusCode"]) == \
            ("InsufficientStorageException", 507)
        assert "out of disk space" in e.value.response["Error"]["Message"]
    # PutMedia cannot even take its slot on the stream: refused the same way, before acks
    assert upload(server, "disk-a", b"") == (507, [])

    # room for the metadata, not for a 2 MiB fragment: the fragment before it is
    # PERSISTED, the big one is ERROR 5001, and the upload ends there
    disk.leave(512 * KiB)
    small = cluster_bytes(clusters[1])
    assert len(small) < 64 * KiB
    big = opaque_cluster(clusters[2].timecode, 2 * MiB, seed=7)
    _, acks = settled_upload(server, "disk-a", header + small + cluster_bytes(big)
                             + cluster_bytes(clusters[3]))
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED", "ERROR"], acks
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"], acks[-1]["FragmentTimecode"]) == \
        (5001, "ARCHIVAL_ERROR", big.timecode)
    stored[acks[1]["FragmentNumber"]] = payloads(clusters[1])
    assert temp_files(server.data_dir) == []  # the partial blob went with the error

    # space again: nothing unwritten was acked, and uploads and writes work at once
    disk.remove_filler()
    assert_every_persisted_fragment_reads_back(archived, {"disk-a": stored})
    _, acks = upload(server, "disk-a", header + cluster_bytes(big))
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"], acks
    assert payloads(stored_cluster(archived, "disk-a", acks[-1]["FragmentNumber"])) == \
        payloads(big)
    kvs.create_stream(StreamName="disk-b", DataRetentionInHours=1)
    kvs.tag_stream(StreamName="disk-a", Tags={"k": "v"})
    assert kvs.list_tags_for_stream(StreamName="disk-a")["Tags"] == {"k": "v"}
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()
    assert query(server.data_dir, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.slow
def test_every_amount_of_free_space_gets_an_honest_answer(full_disk_server, h264):
    """0 to 160 KiB free in 8 KiB steps, one 96 KiB fragment each (on a stream of its own
    whose header is stored already): PERSISTED and stored, or refused with ERROR 5001 or
    HTTP 507; never ERROR 5000 or HTTP 500, never a temporary file left behind."""
    server, disk = full_disk_server
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    header = header_bytes(h264)
    first = synthetic.clusters(h264, START_MS)[0]
    frees = range(0, 160 * KiB + 1, 8 * KiB)
    stored: dict[str, dict] = {}
    for k in range(len(frees)):
        name = f"disk-sweep-{k}"
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
        _, acks = settled_upload(server, name, header + cluster_bytes(first))
        assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"], acks
        stored[name] = {acks[-1]["FragmentNumber"]: payloads(first)}

    outcomes: dict[int, str] = {}
    for k, free in enumerate(frees):
        name = f"disk-sweep-{k}"
        disk.leave(free)
        fragment = opaque_cluster(START_MS + 10_000, 96 * KiB, seed=k)
        status, acks = upload(server, name, header + cluster_bytes(fragment))
        if status == 507:
            outcomes[free] = "507"
        elif acks[-1]["EventType"] == "ERROR":
            assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (5001, "ARCHIVAL_ERROR"), \
                (free, acks)
            outcomes[free] = "5001"
        else:
            assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"], (free, acks)
            stored[name][acks[-1]["FragmentNumber"]] = payloads(fragment)
            outcomes[free] = "PERSISTED"
        assert temp_files(server.data_dir) == [], free
    assert outcomes[0] == "507" and outcomes[frees[-1]] == "PERSISTED", outcomes
    assert "5001" in outcomes.values(), outcomes

    disk.remove_filler()
    assert_every_persisted_fragment_reads_back(archived, stored)
    assert "internal error" not in server.output().lower()
    assert query(server.data_dir, "PRAGMA integrity_check") == [("ok",)]


def test_a_stream_header_that_does_not_fit_is_error_5001(full_disk_server, h264):
    server, disk = full_disk_server
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="disk-header", DataRetentionInHours=1)
    conn = open_upload(server.port, "disk-header")  # the slot is taken while there is room
    try:
        assert conn.status == 200
        disk.leave(0)  # then the disk fills up before the header arrives
        conn.send(header_bytes(h264) + cluster_bytes(synthetic.clusters(h264, START_MS)[0]))
        conn.finish()
        acks = conn.all_acks()
    finally:
        hang_up(conn)
    assert [a["EventType"] for a in acks] == ["ERROR"], acks
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (5001, "ARCHIVAL_ERROR"), acks


def test_the_slot_is_freed_when_an_upload_ends_on_a_full_disk(full_disk_server, h264):
    server, disk = full_disk_server
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="disk-slot", DataRetentionInHours=1)
    clusters = synthetic.clusters(h264, START_MS)
    conn = open_upload(server.port, "disk-slot")
    try:
        assert conn.status == 200
        conn.send(header_bytes(h264) + cluster_bytes(clusters[0]))
        assert len(persisted(conn.wait_for("PERSISTED"))) == 1
        disk.leave(0)  # the disk fills up (another writer), then the producer ends
        conn.finish()
        assert conn.all_acks() == []
    finally:
        hang_up(conn)
    disk.remove_filler()

    def reconnected():  # the producer reconnects as soon as the upload has ended
        conn = open_upload(server.port, "disk-slot")
        if conn.status == 200:
            return conn
        assert error_type(conn) == "ConnectionLimitExceededException"
        hang_up(conn)
        return None

    conn = until(reconnected, timeout=2, interval=0.1)
    assert conn, "the slot of the upload that ended on a full disk was not freed within 2 s"
    try:
        conn.send(header_bytes(h264) + cluster_bytes(clusters[1]))
        conn.finish()
        assert [a["EventType"] for a in conn.all_acks()] == ["RECEIVED", "PERSISTED"]
    finally:
        hang_up(conn)


@pytest.mark.slow
def test_temp_files_left_by_a_crash_are_removed_at_start_up(start_server, h264):
    server = start_server()
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    kvs.create_stream(StreamName="dur-crash", DataRetentionInHours=1)
    numbers = [a["FragmentNumber"] for a in
               persisted(put_mkv(server.port, "dur-crash", synthetic.to_mkv(h264, START_MS)))]
    assert len(numbers) == 4
    [folder] = stream_dirs(server.data_dir, "dur-crash")
    blobs = stream_files(server.data_dir, "dur-crash")
    assert server.stop() == 0

    # what a crash in the middle of writing a blob leaves: `.<name>.tmp` beside the blobs
    planted = [folder / f".{START_MS + 4000}-0badcafe.mkv.tmp",
               server.data_dir / "media" / f".{START_MS}-deadbeef.mkv.tmp"]
    for path in planted:
        path.write_bytes(os.urandom(1000))
    assert temp_files(server.data_dir) == sorted(planted)

    server.start()  # the port is open only after the start-up clean-up ran
    assert temp_files(server.data_dir) == []
    assert stream_files(server.data_dir, "dur-crash") == blobs
    assert sorted(f["FragmentNumber"] for f in listed(archived, "dur-crash")) == numbers
