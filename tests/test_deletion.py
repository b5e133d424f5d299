"""DeleteStream, crash recovery and orphan collection end to end, on real server processes,
real files and the real SQLite database (read-only from here, except to stage a crash)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from engines import LIBFAKETIME, need
from botocore.exceptions import ClientError
from conftest import free_port
from kvs_media import (PutMediaConnection, demux_packets, persisted_numbers, put_mkv,
                       wait_until)

from kvslite.media import mkv, synthetic

pytestmark = pytest.mark.slow  # servers started, crashed and restarted per test

FAST_SWEEP = {"KVSLITE_SWEEP_INTERVAL_S": "0.3"}
HOUR_AGO = time.time() - 3600


# -- helpers ----------------------------------------------------------------------------


def error_code(call, **kwargs) -> str | None:
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def status_or_gone(kvs, arn: str) -> str:
    """DescribeStream by ARN: the stream's Status, or "GONE" once it is not found."""
    try:
        return kvs.describe_stream(StreamARN=arn)["StreamInfo"]["Status"]
    except ClientError as e:
        assert e.response["Error"]["Code"] == "ResourceNotFoundException", e.response
        return "GONE"


def media_files(data_dir: Path) -> set[str]:
    """Every file under <data-dir>/media, as a blob key."""
    root = data_dir / "media"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def stream_dir(arn: str, name: str) -> str:
    return f"streams/{arn.rsplit('/', 1)[1]}-{name}"


def stream_files(data_dir: Path, arn: str, name: str) -> set[str]:
    prefix = stream_dir(arn, name) + "/"
    return {k for k in media_files(data_dir) if k.startswith(prefix)}


def query(data_dir: Path, sql: str, params=(), timeout=10.0) -> list[tuple]:
    """A read-only query on the server's database."""
    conn = sqlite3.connect(f"file:{data_dir / 'kvslite.db'}?mode=ro", uri=True,
                           timeout=timeout)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def rows_of(data_dir: Path, arn: str) -> dict[str, int]:
    return {table: query(data_dir, f"SELECT count(*) FROM {table} WHERE arn = ?", (arn,))[0][0]
            for table in ("streams", "fragments", "headers", "tags")}


NO_ROWS = {"streams": 0, "fragments": 0, "headers": 0, "tags": 0}


def referenced_keys(data_dir: Path, timeout=10.0) -> set[str]:
    return {row[0] for row in query(data_dir, "SELECT blob_key FROM fragments",
                                    timeout=timeout)}


def digests(data_dir: Path, keys) -> dict[str, str]:
    root = data_dir / "media"
    return {k: hashlib.sha256((root / k).read_bytes()).hexdigest() for k in keys}


def make_stream(server, name: str, h264, start_ms: int, *, copies: int = 1,
                tags: dict | None = None) -> tuple[str, list[str]]:
    """A stream holding `copies` of the 4-fragment video, 10 s apart: (ARN, numbers)."""
    kvs = server.client("kinesisvideo")
    arn = kvs.create_stream(StreamName=name, DataRetentionInHours=24,
                            Tags=tags or {"owner": "tests"})["StreamARN"]
    numbers = []
    for copy in range(copies):
        numbers += persisted_numbers(put_mkv(
            server.port, name, synthetic.to_mkv(h264, start_ms + copy * 10_000)))
    assert len(numbers) == 4 * copies
    return arn, numbers


def start_ms(seconds_back: int = 120) -> int:
    return int(time.time() * 1000) - seconds_back * 1000


def assert_all_gone(server, arn: str, name: str, timeout=15.0) -> None:
    """The deleted stream leaves nothing: not found by ARN, no file, no row."""
    kvs = server.client("kinesisvideo")
    wait_until(lambda: status_or_gone(kvs, arn) == "GONE", timeout,
               f"{arn} to be gone")
    assert stream_files(server.data_dir, arn, name) == set()
    assert not (server.data_dir / "media" / stream_dir(arn, name)).exists()
    assert rows_of(server.data_dir, arn) == NO_ROWS
    archived = server.client("kinesis-video-archived-media")
    assert error_code(archived.list_fragments, StreamARN=arn) == "ResourceNotFoundException"


# -- DeleteStream -------------------------------------------------------------------------

def test_delete_stream_returns_at_once_frees_the_name_and_wakes_the_sweeper(start_server,
                                                                              h264):
    """With a 1 h sweep interval, deletion still finishes within seconds: DeleteStream wakes
    the sweeper. Meanwhile the name is free and a new stream has nothing of the old one."""
    server = start_server(env={"KVSLITE_SWEEP_INTERVAL_S": "3600"})
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    old_arn, _ = make_stream(server, "cam", h264, start_ms(), copies=2)
    assert len(stream_files(server.data_dir, old_arn, "cam")) == 8
    version = kvs.describe_stream(StreamARN=old_arn)["StreamInfo"]["Version"]

    began = time.monotonic()
    kvs.delete_stream(StreamARN=old_arn, CurrentVersion=version)
    assert time.monotonic() - began < 2.0
    assert status_or_gone(kvs, old_arn) in ("DELETING", "GONE")
    # by name and everywhere else the old stream is gone at once
    assert error_code(kvs.describe_stream, StreamName="cam") == "ResourceNotFoundException"

    new_arn = kvs.create_stream(StreamName="cam", DataRetentionInHours=24)["StreamARN"]
    assert new_arn != old_arn
    info = kvs.describe_stream(StreamName="cam")["StreamInfo"]
    assert (info["StreamARN"], info["Status"]) == (new_arn, "ACTIVE")
    assert archived.list_fragments(StreamName="cam")["Fragments"] == []
    assert archived.list_fragments(StreamARN=new_arn)["Fragments"] == []
    assert [(s["StreamName"], s["StreamARN"]) for s in kvs.list_streams()["StreamInfoList"]] \
        == [("cam", new_arn)]
    assert kvs.list_tags_for_stream(StreamARN=new_arn)["Tags"] == {}

    assert_all_gone(server, old_arn, "cam", timeout=10)  # long before the 1 h interval
    assert f"stream cam ({old_arn}) deleted" in server.output()
    # the new stream works and holds only its own fragments
    numbers = persisted_numbers(put_mkv(server.port, "cam", synthetic.to_mkv(h264, start_ms(60))))
    assert sorted(f["FragmentNumber"] for f in
                  archived.list_fragments(StreamName="cam")["Fragments"]) == sorted(numbers)
    assert media_files(server.data_dir) == stream_files(server.data_dir, new_arn, "cam")
    assert len(media_files(server.data_dir)) == 4


def test_stream_stays_deleting_while_its_media_cannot_be_removed(start_server, h264):
    """Deterministic DELETING: one of the stream's blob paths is a directory, so every
    sweep fails on it and retries. Once it can be removed, the next sweep finishes."""
    server = start_server(env=FAST_SWEEP)
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    arn, _ = make_stream(server, "stuck", h264, start_ms())
    last_blob = query(server.data_dir, "SELECT blob_key FROM fragments WHERE arn = ? "
                      "ORDER BY seq DESC LIMIT 1", (arn,))[0][0]
    blocker = server.data_dir / "media" / last_blob
    blocker.unlink()
    blocker.mkdir()
    (blocker / "keep").write_bytes(b"x")

    kvs.delete_stream(StreamARN=arn)
    wait_until(lambda: "sweep failed" in server.output(), what="a failing sweep")
    for _ in range(10):  # several failing sweeps (0.3 s apart): still DELETING
        info = kvs.describe_stream(StreamARN=arn)["StreamInfo"]
        assert (info["Status"], info["StreamName"]) == ("DELETING", "stuck")
        time.sleep(0.15)
    assert rows_of(server.data_dir, arn)["streams"] == 1
    # gone for every other operation, and the name is free
    assert error_code(archived.list_fragments, StreamARN=arn) == "ResourceNotFoundException"
    assert error_code(kvs.get_data_endpoint, StreamARN=arn,
                      APIName="GET_MEDIA") == "ResourceNotFoundException"
    assert kvs.list_streams()["StreamInfoList"] == []
    new_arn = kvs.create_stream(StreamName="stuck", DataRetentionInHours=1)["StreamARN"]
    assert [s["StreamARN"] for s in kvs.list_streams()["StreamInfoList"]] == [new_arn]

    shutil.rmtree(blocker)
    assert_all_gone(server, arn, "stuck")
    assert kvs.describe_stream(StreamName="stuck")["StreamInfo"]["StreamARN"] == new_arn


def test_deletion_interrupted_by_a_crash_resumes_after_restart(start_server, tmp_path, h264):
    """The state a crash half-way through a deletion leaves: the stream row says DELETING
    (DeleteStream's commit) and about half of its files are gone. Restarted, kvslite
    finishes the job, and touches no other stream."""
    data_dir = tmp_path / "crash-delete"
    server = start_server(data_dir=data_dir)
    arn, _ = make_stream(server, "doomed", h264, start_ms(), copies=3,
                         tags={"a": "1", "b": "2"})
    keep_arn, keep_numbers = make_stream(server, "keeper", h264, start_ms())
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    files = sorted(stream_files(data_dir, arn, "doomed"))
    assert len(files) == 12
    conn = sqlite3.connect(data_dir / "kvslite.db")
    with conn:
        conn.execute("UPDATE streams SET status = 'DELETING' WHERE arn = ?", (arn,))
    conn.close()
    for key in files[::2]:
        (data_dir / "media" / key).unlink()
    assert rows_of(data_dir, arn) == {"streams": 1, "fragments": 12, "headers": 1, "tags": 2}
    keep_files = digests(data_dir, stream_files(data_dir, keep_arn, "keeper"))
    assert len(keep_files) == 4

    again = start_server(data_dir=data_dir, env=FAST_SWEEP)
    kvs = again.client("kinesisvideo")
    assert status_or_gone(kvs, arn) in ("DELETING", "GONE")
    assert error_code(kvs.describe_stream, StreamName="doomed") == "ResourceNotFoundException"
    assert [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]] == ["keeper"]
    assert_all_gone(again, arn, "doomed")
    # the other stream is untouched, byte for byte, and still readable
    assert digests(data_dir, stream_files(data_dir, keep_arn, "keeper")) == keep_files
    archived = again.client("kinesis-video-archived-media")
    assert sorted(f["FragmentNumber"] for f in
                  archived.list_fragments(StreamName="keeper")["Fragments"]) == keep_numbers
    assert media_files(data_dir) == set(keep_files)


def test_delete_stream_during_an_upload_ends_it_and_leaves_no_file(start_server, h264):
    """A fragment that arrives after DeleteStream is refused (ERROR 4008) and its file is
    not left behind; what was archived before goes with the stream."""
    server = start_server(env=FAST_SWEEP)
    kvs = server.client("kinesisvideo")
    arn = kvs.create_stream(StreamName="live", DataRetentionInHours=24)["StreamARN"]
    base = start_ms(400)
    clusters = [c for copy in range(60) for c in synthetic.clusters(h264, base + copy * 4000)]
    conn = PutMediaConnection(server.port, "live")

    def upload():
        try:
            conn.send(mkv.write_header(synthetic.stream_header(h264)))
            for cluster in clusters:
                conn.send(mkv.write_cluster(cluster)[0])
                time.sleep(0.002)
            conn.finish()
        except OSError:
            pass  # the server closed the upload

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    acks = conn.wait_for("PERSISTED", count=5)
    kvs.delete_stream(StreamARN=arn)
    acks += conn.all_acks(timeout=20)
    conn.close()
    sender.join(10)
    assert acks[-1]["EventType"] == "ERROR"
    assert (acks[-1]["ErrorId"], acks[-1]["ErrorCode"]) == (4008, "STREAM_NOT_ACTIVE")
    assert 5 <= len(persisted_numbers(acks)) < len(clusters)
    assert_all_gone(server, arn, "live")
    assert media_files(server.data_dir) == set()


def test_a_deleted_stream_leaves_no_lease_rows(start_server, h264):
    server = start_server(env=FAST_SWEEP)
    arn, _ = make_stream(server, "leased", h264, start_ms())
    media = server.client("kinesis-video-media")
    response = media.get_media(StreamARN=arn, StartSelector={"StartSelectorType": "EARLIEST"})
    response["Payload"].close()
    server.client("kinesisvideo").delete_stream(StreamARN=arn)
    assert_all_gone(server, arn, "leased")
    like = ("%:" + arn,)
    assert query(server.data_dir, "SELECT * FROM leases WHERE resource LIKE ?", like) == []
    assert query(server.data_dir, "SELECT * FROM lease_epochs WHERE resource LIKE ?",
                 like) == []


def test_a_stuck_deletion_does_not_stop_housekeeping_for_other_streams(start_server, h264):
    server = start_server(env=FAST_SWEEP)
    arn, _ = make_stream(server, "stuck2", h264, start_ms())
    last_blob = query(server.data_dir, "SELECT blob_key FROM fragments WHERE arn = ? "
                      "ORDER BY seq DESC LIMIT 1", (arn,))[0][0]
    blocker = server.data_dir / "media" / last_blob
    blocker.unlink()
    blocker.mkdir()
    (blocker / "keep").write_bytes(b"x")
    orphan = server.data_dir / "media" / "streams" / "1-ghost" / "1-dead.mkv"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    two_hours_ago = time.time() - 7200  # well past the default 1 h grace
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    server.client("kinesisvideo").delete_stream(StreamARN=arn)
    wait_until(lambda: "sweep failed" in server.output(), what="a failing sweep")
    wait_until(lambda: not orphan.exists(), timeout=3, what="the orphan to be collected")


def data_files(data_dir: Path) -> set[Path]:
    """Every file under the data dir except the metadata database (and its WAL/SHM)."""
    return {p for p in data_dir.rglob("*")
            if p.is_file() and not p.name.startswith("kvslite.db")}


def test_delete_stream_removes_its_media_files(start_server, h264):
    server = start_server()
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    for name in ("del-kept", "del-doomed"):
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    assert len(persisted_numbers(put_mkv(server.port, "del-kept",
                                         synthetic.to_mkv(h264, start_ms())))) == 4
    before = data_files(server.data_dir)
    assert len(persisted_numbers(put_mkv(server.port, "del-doomed",
                                         synthetic.to_mkv(h264, start_ms())))) == 4
    doomed = data_files(server.data_dir) - before
    assert doomed, "the upload wrote no media files under the data dir"
    # folders holding only the doomed stream's media must end up with no file in them
    doomed_dirs = {p.parent for p in doomed} - {p.parent for p in before}

    kvs.delete_stream(StreamARN=kvs.describe_stream(StreamName="del-doomed")
                      ["StreamInfo"]["StreamARN"])

    def gone():  # deletion may finish in the background (the stream first DELETING)
        left = [p for p in doomed if p.exists()]
        left += [p for d in doomed_dirs if d.exists() for p in d.rglob("*") if p.is_file()]
        return not left

    wait_until(gone, timeout=10, what="the deleted stream's media files to go")
    assert all(p.exists() for p in before)  # the other stream's media stays
    assert len(archived.list_fragments(StreamName="del-kept")["Fragments"]) == 4


# -- orphans and temporary files ------------------------------------------------------------

def test_orphans_and_temporary_files_are_collected_after_their_grace(start_server, tmp_path,
                                                                     h264):
    data_dir = tmp_path / "orphans"
    server = start_server(data_dir=data_dir)
    arn, numbers = make_stream(server, "orph", h264, start_ms())
    assert server.stop() == 0
    media = data_dir / "media"
    referenced = media_files(data_dir)
    assert len(referenced) == 4 and referenced == referenced_keys(data_dir)
    before = digests(data_dir, referenced)
    folder = stream_dir(arn, "orph")
    old_orphans = [f"{folder}/123-dead.mkv", "streams/1-ghost/456-dead.mkv"]
    temp_files = [f"{folder}/.x.mkv.tmp", f"{folder}/.y.mkv.tmp"]
    fresh_orphan = f"{folder}/789-fresh.mkv"
    for key in old_orphans + temp_files + [fresh_orphan]:
        (media / key).parent.mkdir(parents=True, exist_ok=True)
        (media / key).write_bytes(b"\x1f\x43\xb6\x75" + os.urandom(64))
    for key in old_orphans + temp_files[:1] + sorted(referenced):  # an hour old...
        os.utime(media / key, (HOUR_AGO, HOUR_AGO))
    # ...but the second temporary file and the fresh orphan were written just now

    log_start = len(server.output())
    again = start_server(data_dir=data_dir,
                         env={"KVSLITE_ORPHAN_GRACE_S": "60", **FAST_SWEEP})
    # temporary files go at start-up, before the port opens, whatever their age
    assert not any((media / key).exists() for key in temp_files)
    wait_until(lambda: not any((media / key).exists() for key in old_orphans),
               what="the old orphans to go")
    log = wait_until(lambda: "orphan media files:" in (out := again.output()[log_start:])
                     and out, what="the orphan report in the log")
    assert "removed 2 temporary files left by an earlier crash" in log
    assert "removed 2 orphan media files:" in log
    for key in old_orphans:
        assert key in log
    assert fresh_orphan not in log
    assert not (media / "streams/1-ghost").exists()  # emptied folders go too

    # the fresh orphan is within its grace period: a later sweep, seen removing an old
    # orphan dropped in beside it, checks it too and keeps it
    for n in range(2):
        probe = media / f"{folder}/{n}-probe.mkv"
        probe.write_bytes(b"\x1f\x43\xb6\x75" + os.urandom(64))
        os.utime(probe, (HOUR_AGO, HOUR_AGO))
        wait_until(lambda: not probe.exists(), what="a later sweep to remove the probe")
    assert media_files(data_dir) == referenced | {fresh_orphan}
    assert digests(data_dir, referenced) == before
    archived = again.client("kinesis-video-archived-media")
    assert sorted(f["FragmentNumber"] for f in
                  archived.list_fragments(StreamName="orph")["Fragments"]) == numbers
    data = archived.get_media_for_fragment_list(StreamName="orph",
                                                Fragments=numbers)["Payload"].read()
    assert [p for _, _, p in demux_packets(data)] == [p for _, _, p in h264.packets]




def test_temporary_files_go_at_start_up_even_when_the_clock_is_behind(start_server,
                                                                      tmp_path):
    need(LIBFAKETIME is not None, "Debian's libfaketime")
    data_dir = tmp_path / "clock-behind"
    leftover = data_dir / "media" / "streams" / "1-x" / ".1-dead.mkv.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    start_server(data_dir=data_dir, env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": "-60m",
                                         "DONT_FAKE_MONOTONIC": "1"})
    assert not leftover.exists()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def _crash_leftovers(data_dir: Path, timeout=10.0) -> tuple[set[str], set[str]]:
    """(temporary files, media files no row refers to) right now."""
    files = media_files(data_dir)
    temp = {k for k in files if k.rsplit("/", 1)[-1].startswith(".") and k.endswith(".tmp")}
    return temp, files - temp - referenced_keys(data_dir, timeout)


def test_kill_9_mid_upload_leaves_nothing_unreferenced_after_restart(start_server, tmp_path,
                                                                     h264):
    """kill -9 during a long upload, preferably at a moment a blob has no row yet (the
    server is frozen with SIGSTOP and inspected until one is caught). After a restart
    with no orphan grace: no temporary file, every media file belongs to a row, and every
    fragment acked PERSISTED before the kill is listed and readable byte for byte."""
    data_dir = tmp_path / "crash-upload"
    server = start_server(data_dir=data_dir)
    server.client("kinesisvideo").create_stream(StreamName="busy", DataRetentionInHours=24)
    copies = 60
    base = start_ms(copies * 4 + 30)
    clusters = [c for copy in range(copies) for c in synthetic.clusters(h264, base + copy * 4000)]
    by_timecode = {c.timecode: c for c in clusters}
    conn = PutMediaConnection(server.port, "busy")

    def upload():
        try:
            conn.send(mkv.write_header(synthetic.stream_header(h264)))
            for cluster in clusters:
                conn.send(mkv.write_cluster(cluster)[0])
            conn.finish()
        except OSError:
            pass  # the server was killed

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    pid = server.proc.pid
    acks = conn.wait_for("PERSISTED", count=5)  # a few acked before the kill, at least
    caught: tuple[set[str], set[str]] = (set(), set())
    rng = random.Random(1)
    for _ in range(400):
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(pid), timeout=5, what="SIGSTOP")
        try:  # frozen while holding a SQLite lock, the database may not be readable
            caught = _crash_leftovers(data_dir, timeout=0.5)
        except sqlite3.OperationalError:
            caught = (set(), set())
        if any(caught):
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(rng.uniform(0, 0.004))
    print(f"caught at kill: temporary files {sorted(caught[0])}, orphans {sorted(caught[1])}")
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL  # stopped or running
    assert conn.closed.wait(10)
    sender.join(10)
    conn.close()
    while not conn.acks.empty():
        acks.append(conn.acks.get())
    acked = [a for a in acks if a["EventType"] == "PERSISTED"]
    assert len(acked) >= 5
    assert len(acked) < len(clusters), "the upload finished before the kill"

    again = start_server(data_dir=data_dir,
                         env={"KVSLITE_ORPHAN_GRACE_S": "0", **FAST_SWEEP})
    wait_until(lambda: _crash_leftovers(data_dir) == (set(), set()),
               what="temporary files and orphans to go")
    files = media_files(data_dir)
    assert files == referenced_keys(data_dir)  # and every row's blob exists
    if caught[0]:
        assert f"removed {len(caught[0])} temporary files" in again.output()
    # a blob caught without a row may have had its commit in flight (then the restart
    # found the row); one that still has no row was an orphan: removed and reported
    for key in caught[1] - referenced_keys(data_dir):
        wait_until(lambda key=key: key in again.output(), what=f"the log to report {key}")
    archived = again.client("kinesis-video-archived-media")
    pages = archived.get_paginator("list_fragments").paginate(StreamName="busy")
    listed = {f["FragmentNumber"] for page in pages for f in page["Fragments"]}
    numbers = [a["FragmentNumber"] for a in acked]
    assert set(numbers) <= listed
    assert len(listed) == len(files)
    data = archived.get_media_for_fragment_list(StreamName="busy",
                                                Fragments=numbers)["Payload"].read()
    sent = [f.payload for a in acked for f in by_timecode[a["FragmentTimecode"]].frames]
    assert [p for _, _, p in demux_packets(data)] == sent


# -- one server per data directory -----------------------------------------------------------

def test_a_second_server_on_the_same_data_dir_refuses_to_start(start_server, h264):
    first = start_server()
    data_dir = first.data_dir
    # a temporary file as if the first were mid-write: the second must not clean it up
    in_flight = data_dir / "media" / "streams" / "1-x" / ".in-flight.mkv.tmp"
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"partial")

    began = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "kvslite", "serve", "--port", str(free_port()),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, **FAST_SWEEP})
    assert time.monotonic() - began < 15
    assert second.returncode != 0
    assert str(data_dir) in second.stderr and "in use" in second.stderr, second.stderr
    assert f"pid {first.proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert in_flight.exists()
    assert (data_dir / "kvslite.lock").read_text().strip() == f"pid {first.proc.pid}"

    # the first keeps serving
    assert first.proc.poll() is None
    arn, numbers = make_stream(first, "still-here", h264, start_ms())
    archived = first.client("kinesis-video-archived-media")
    assert sorted(f["FragmentNumber"] for f in
                  archived.list_fragments(StreamARN=arn)["Fragments"]) == numbers
    # once it stops, the directory is free again
    assert first.stop() == 0
    third = start_server(data_dir=data_dir)
    assert [s["StreamName"] for s in
            third.client("kinesisvideo").list_streams()["StreamInfoList"]] == ["still-here"]
    assert not in_flight.exists()  # now nobody writes it: removed at start-up
