"""PutMedia's per-chunk cost: body chunks are parsed on the event loop, and a worker thread
is asked for only when a chunk completes something to archive (issue 22).

A camera sends each fragment in many body chunks; a hand-off to a worker thread per chunk
cost ~0.1 ms of CPU each. `kvslite_putmedia_handoffs_total` counts the hand-offs. Likewise
an upload's lease is renewed by the commits of its fragments, not by writes of its own
(`kvslite_lease_renewals_total`).
"""

from __future__ import annotations

import time

from conftest import metric
from kvs_media import PutMediaConnection

from kvslite.media import ebml, mkv, synthetic

NOW_MS = int(time.time() * 1000)
END_OF_FRAGMENT = mkv.write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])


def sdk_fragments(h264, start_ms: int) -> list[bytes]:
    """Unknown-size clusters each closed by END_OF_FRAGMENT, as the producer SDK sends."""
    return [mkv.write_cluster(c, unknown_size=True)[0] + END_OF_FRAGMENT
            for c in synthetic.clusters(h264, start_ms)]


def pieces(data: bytes, n: int) -> list[bytes]:
    """`data` in n chunks, the last holding the whole END_OF_FRAGMENT Tags."""
    body, tail = data[:-len(END_OF_FRAGMENT)], END_OF_FRAGMENT
    step = -(-len(body) // (n - 1))
    return [body[i:i + step] for i in range(0, len(body), step)] + [tail]


def test_one_handoff_per_fragment_however_many_chunks(shared_server, kvs, h264):
    kvs.create_stream(StreamName="handoffs", DataRetentionInHours=1)
    fragments = sdk_fragments(h264, NOW_MS - 60_000)
    assert len(fragments) == 4
    conn = PutMediaConnection(shared_server.port, "handoffs")
    conn.send(mkv.write_header(synthetic.stream_header(h264)) + fragments[0])
    conn.wait_for("PERSISTED")
    before = metric(shared_server, "kvslite_putmedia_handoffs_total")
    for fragment in fragments[1:]:  # 40 chunks each, the next only once this one is acked
        for piece in pieces(fragment, 40):
            conn.send(piece)
        assert conn.wait_for("PERSISTED")[-1]["EventType"] == "PERSISTED"
    # one per fragment, none per chunk
    assert metric(shared_server, "kvslite_putmedia_handoffs_total") - before == 3
    conn.finish()
    acks = conn.all_acks()
    conn.close()
    assert [a["EventType"] for a in acks] == []  # every ack was read above
    listed = shared_server.client("kinesis-video-archived-media").list_fragments(
        StreamName="handoffs")["Fragments"]
    assert len(listed) == 4


def test_long_runs_of_tiny_elements_are_parsed_off_the_event_loop(shared_server, kvs, h264):
    """3000 Void elements in one chunk are past the event loop's parsing budget: the rest
    is read on a worker thread, and the fragment is archived as usual."""
    kvs.create_stream(StreamName="voids", DataRetentionInHours=1)
    cluster = synthetic.clusters(h264, NOW_MS - 30_000)[0]
    data, _ = mkv.write_cluster(cluster, unknown_size=True)
    voids = ebml.element(ebml.VOID, b"") * 3000  # 2 bytes each, skipped by the reader
    conn = PutMediaConnection(shared_server.port, "voids")
    before = metric(shared_server, "kvslite_putmedia_handoffs_total")
    conn.send(mkv.write_header(synthetic.stream_header(h264)) + data + voids + END_OF_FRAGMENT)
    done = conn.wait_for("PERSISTED")
    conn.finish()
    conn.all_acks()
    conn.close()
    assert [a["EventType"] for a in done] == ["RECEIVED", "PERSISTED"]
    assert done[-1]["FragmentTimecode"] == cluster.timecode
    assert metric(shared_server, "kvslite_putmedia_handoffs_total") - before >= 1
    fragment, = shared_server.client("kinesis-video-archived-media").list_fragments(
        StreamName="voids")["Fragments"]
    assert fragment["FragmentSizeInBytes"] == len(mkv.write_cluster(cluster)[0])


def test_a_busy_upload_is_kept_alive_by_its_commits_an_idle_one_renews(start_server, h264):
    """Over 7 s (two renewal periods of 3 s), an upload committing a fragment every 0.5 s
    writes no lease renewal of its own: each commit renews its lease. An idle upload beside
    it renews on its own, once or twice. (Before, the busy upload renewed too: 3 or more.)"""
    server = start_server()
    kvs = server.client("kinesisvideo")
    for name in ("busy", "idle"):
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    header = mkv.write_header(synthetic.stream_header(h264))
    start = NOW_MS - 600_000
    fragments = [f for k in range(4) for f in sdk_fragments(h264, start + k * 4000)]
    busy, idle = PutMediaConnection(server.port, "busy"), PutMediaConnection(server.port, "idle")
    idle.send(header + fragments[0])
    busy.send(header + fragments[0])
    busy.wait_for("PERSISTED")
    idle.wait_for("PERSISTED")
    before = metric(server, "kvslite_lease_renewals_total")
    t0, persisted = time.monotonic(), []
    for k, fragment in enumerate(fragments[1:15]):  # 14 fragments, 0.5 s apart: 7 s
        time.sleep(max(0.0, t0 + 0.5 * (k + 1) - time.monotonic()))
        busy.send(fragment)
        persisted.append(busy.wait_for("PERSISTED")[-1])
    renewed = metric(server, "kvslite_lease_renewals_total") - before
    for conn in (busy, idle):
        conn.finish()
        assert not [a for a in conn.all_acks() if a["EventType"] == "ERROR"]
        conn.close()
    assert [ack["EventType"] for ack in persisted] == ["PERSISTED"] * 14
    assert 1 <= renewed <= 2, f"{renewed} renewals in {time.monotonic() - t0:.1f} s"
