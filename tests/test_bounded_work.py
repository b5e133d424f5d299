"""Bounded work for streaming sessions on a real `kvslite serve`: a LIVE_REPLAY from 1970
answers at once, and a LIVE_REPLAY playlist poll costs the same deep into a long
archive as near its start, with its window, media sequence and discontinuity sequence
checked against a brute-force count over ListFragments.
"""

from __future__ import annotations

import datetime as dt
import http.client
import io
import statistics
import threading
import time
import urllib.parse
import urllib.request

import av
import pytest

from kvs_media import PutMediaConnection, put_mkv
from kvslite.media import synthetic
from kvslite.media.mkv import Cluster, Frame, StreamHeader, Track, write_cluster, write_header

pytestmark = pytest.mark.slow  # a long archive is written first

GAP_TOLERANCE_MS = 50  # AWS: a gap or overlap beyond this is a discontinuity
EPOCH_PLUS_1S = dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc)
# Bounds on 2 busy cores are for unbounded work (a walk from 1970, a scan of the whole
# archive per poll), which takes far longer; how fast a call is, is a benchmark's question.
UNBOUNDED_S = 5.0


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def kvs(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media", max_pool_connections=60)


# -- helpers -----------------------------------------------------------------------------


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def media_url(master_url: str) -> str:
    return master_url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist")


def parse_playlist(text: str) -> dict:
    """The tags a test checks and, per segment, its fragment number and whether an
    EXT-X-DISCONTINUITY precedes it."""
    out = {"numbers": [], "marked": [], "endlist": "#EXT-X-ENDLIST" in text}
    marker = False
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            out["media_sequence"] = int(line.split(":")[1])
        elif line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE:"):
            out["discontinuity_sequence"] = int(line.split(":")[1])
        elif line == "#EXT-X-DISCONTINUITY":
            marker = True
        elif line.startswith("getMP4MediaFragment.mp4?") or line.startswith("getTSFragment"):
            out["numbers"].append(urllib.parse.parse_qs(line.split("?", 1)[1])
                                  ["FragmentNumber"][0])
            out["marked"].append(marker)
            marker = False
    return out


def list_all_fragments(archived, stream: str) -> list[dict]:
    """Every fragment of the stream by ListFragments (all pages), in producer-time order."""
    fragments, token = [], None
    while True:
        page = archived.list_fragments(StreamName=stream, MaxResults=1000,
                                       **({"NextToken": token} if token else {}))
        fragments += page["Fragments"]
        token = page.get("NextToken")
        if not token:
            break
    return sorted(fragments, key=lambda f: (f["ProducerTimestamp"], f["FragmentNumber"]))


def start_ms(fragment: dict) -> int:
    return round(fragment["ProducerTimestamp"].timestamp() * 1000)


# -- 5. LIVE_REPLAY from 1970 ------------------------------------------------------------


def replay_from_1970(archived, stream: str, **kwargs) -> str:
    return archived.get_hls_streaming_session_url(
        StreamName=stream, PlaybackMode="LIVE_REPLAY",
        HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                             "TimestampRange": {"StartTimestamp": EPOCH_PLUS_1S}},
        **kwargs)["HLSStreamingSessionURL"]


def test_live_replay_from_1970_answers_at_once(server, kvs, archived, h264):
    stream = "replay-1970"
    kvs.create_stream(StreamName=stream, DataRetentionInHours=24)
    now_ms = int(time.time() * 1000)
    acks = put_mkv(server.port, stream, synthetic.to_mkv(h264, now_ms - 20_000))
    assert sum(a["EventType"] == "PERSISTED" for a in acks) == 4, acks
    listed = [f["FragmentNumber"] for f in list_all_fragments(archived, stream)]
    assert len(listed) == 4

    replay_from_1970(archived, stream)  # warm the client (model loading, connection)
    started = time.monotonic()
    url = replay_from_1970(archived, stream)
    assert time.monotonic() - started < UNBOUNDED_S, time.monotonic() - started
    started = time.monotonic()
    archived.get_dash_streaming_session_url(
        StreamName=stream, PlaybackMode="LIVE_REPLAY",
        DASHFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                              "TimestampRange": {"StartTimestamp": EPOCH_PLUS_1S}})
    assert time.monotonic() - started < UNBOUNDED_S, time.monotonic() - started

    # the playlist works: it lists the fragments (the first page is shown at once) and
    # its segments play
    started = time.monotonic()
    master = fetch(url).decode()
    playlist = parse_playlist(fetch(media_url(url)).decode())
    assert time.monotonic() - started < UNBOUNDED_S
    assert "#EXT-X-STREAM-INF:" in master
    assert playlist["numbers"] == listed, (playlist, listed)
    assert playlist["media_sequence"] == 0 and playlist["discontinuity_sequence"] == 0
    assert not playlist["endlist"]
    base = url.split("getHLSMasterPlaylist.m3u8")[0]
    token = url.split("SessionToken=")[1]
    init = fetch(f"{base}getMP4InitFragment.mp4?SessionToken={token}"
                 f"&FragmentNumber={listed[1]}")
    segment = fetch(f"{base}getMP4MediaFragment.mp4?SessionToken={token}"
                    f"&FragmentNumber={listed[1]}")
    assert init[4:8] == b"ftyp" and segment[4:8] == b"moof"
    with av.open(io.BytesIO(init + segment)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 25  # one 1-s GOP at 25 fps

    # 45 at once, while DescribeStream keeps answering
    results: list[tuple[float, str | None]] = []
    describe_times: list[float] = []
    stop = threading.Event()

    def describe_loop():
        client = server.client("kinesisvideo")
        while not stop.is_set():
            t = time.monotonic()
            assert client.describe_stream(StreamName=stream)["StreamInfo"]["Status"] == \
                "ACTIVE"
            describe_times.append(time.monotonic() - t)
            time.sleep(0.02)

    def one_session():
        t = time.monotonic()
        try:
            replay_from_1970(archived, stream)
            results.append((time.monotonic() - t, None))
        except Exception as e:  # reported below
            results.append((time.monotonic() - t, repr(e)))

    describer = threading.Thread(target=describe_loop, daemon=True)
    describer.start()
    time.sleep(0.1)
    workers = [threading.Thread(target=one_session) for _ in range(45)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    elapsed = time.monotonic() - started
    time.sleep(0.1)
    stop.set()
    describer.join(10)

    assert len(results) == 45 and all(error is None for _, error in results), results
    assert elapsed < 2 * UNBOUNDED_S, elapsed
    assert len(describe_times) >= 3, describe_times
    assert max(describe_times) < UNBOUNDED_S, describe_times
    assert "Traceback" not in server.output()


# -- 6. playlist polls do bounded work ---------------------------------------------------


def tiny_keyframe() -> tuple[bytes, bytes]:
    """(avcC, one keyframe) of a tiny H.264 picture."""
    video = synthetic.encode_video("h264", width=32, height=32, seconds=0.04, gop=1, bframes=0)
    return video.codec_private, video.packets[0][2]


def tiny_header(name: str, codec_private: bytes) -> bytes:
    """A stream header whose single-frame fragments last 1 ms (DefaultDuration)."""
    track = Track(number=1, uid=1, track_type=1, codec_id="V_MPEG4/ISO/AVC",
                  codec_private=codec_private, name=name, width=32, height=32,
                  default_duration_ns=1_000_000)
    return write_header(StreamHeader(timecode_scale_ns=1_000_000, tracks=[track]))


def tiny_clusters(starts: list[int], payload: bytes) -> bytes:
    return b"".join(write_cluster(Cluster(t, [Frame(1, t, True, payload)]))[0] for t in starts)


GAP_MS, NEAR_GAP_MS = 60, 45  # spacing: a 59 ms gap is a discontinuity, 44 ms is not


def timeline(first_ms: int, count: int) -> list[int]:
    """Starts of `count` back-to-back 1-ms fragments, with a real gap before fragment
    i % 1000 == 500 and one within the tolerance before i % 1000 == 250, and one of each
    again among the last ten, so that a window at the tip shows them."""
    starts, t = [], first_ms
    for i in range(count):
        if i:
            if i % 1000 == 500 or i == count - 4:
                t += GAP_MS
            elif i % 1000 == 250 or i == count - 7:
                t += NEAR_GAP_MS
            else:
                t += 1
        starts.append(t)
    return starts


def expected_discontinuities(fragments: list[dict], header_of: dict, mode: str) -> list[bool]:
    """Brute force: whether fragment i (i >= 1) is preceded by a discontinuity."""
    out = [False]
    for previous, fragment in zip(fragments, fragments[1:]):
        new_header = header_of[previous["FragmentNumber"]] != header_of[fragment["FragmentNumber"]]
        gap = start_ms(fragment) - (start_ms(previous) + previous["FragmentLengthInMilliseconds"])
        out.append(mode == "ALWAYS" or new_header or
                   (mode == "ON_DISCONTINUITY" and abs(gap) > GAP_TOLERANCE_MS))
    return out


def check_window(playlist: dict, fragments: list[dict], marks: list[bool], size: int) -> int:
    """The playlist against the brute-force session list; returns how many are shown."""
    numbers = [f["FragmentNumber"] for f in fragments]
    assert len(playlist["numbers"]) == size, playlist
    first = numbers.index(playlist["numbers"][0])
    assert playlist["numbers"] == numbers[first:first + size]
    assert playlist["media_sequence"] == first  # = shown - window size
    assert playlist["discontinuity_sequence"] == sum(marks[1:first + 1]), \
        (playlist["discontinuity_sequence"], sum(marks[1:first + 1]), first)
    assert playlist["marked"] == [False] + marks[first + 1:first + size]
    return first + size


class Poller:
    """GETs one session's media playlist over a kept-alive connection, timing each poll."""

    def __init__(self, master_url: str):
        parts = urllib.parse.urlsplit(media_url(master_url))
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.path = f"{parts.path}?{parts.query}"

    def poll(self) -> tuple[float, dict]:
        for attempt in (1, 2):  # the server closes a connection left idle (keep-alive)
            started = time.monotonic()
            try:
                self.conn.request("GET", self.path)
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        elapsed = time.monotonic() - started
        assert response.status == 200, body
        return elapsed, parse_playlist(body.decode())

    def until_shown(self, shown: int, timeout: float) -> dict:
        """Poll until the paced window has reached `shown` fragments (the tip)."""
        deadline = time.monotonic() + timeout
        while True:
            _, playlist = self.poll()
            if playlist["media_sequence"] + len(playlist["numbers"]) >= shown or \
                    time.monotonic() > deadline:
                return playlist
            time.sleep(0.1)

    def close(self) -> None:
        self.conn.close()


def upload(port: int, stream: str, header: bytes, clusters: list[bytes],
           pauses: dict | None = None) -> list[str]:
    """One PutMedia of header + clusters, sent in bulk; at each index i of `pauses`, once
    the clusters before it are persisted (but the last, which completes when the next
    one starts), pauses[i]() runs. Returns the persisted fragment numbers."""
    conn = PutMediaConnection(port, stream)
    acks, sent = [], 0
    try:
        conn.send(header)
        for index, pause in sorted((pauses or {}).items()):
            conn.send(b"".join(clusters[sent:index]))
            sent = index
            persisted = sum(a["EventType"] == "PERSISTED" for a in acks)
            acks += conn.wait_for("PERSISTED", count=index - 1 - persisted, timeout=60)
            pause()
        conn.send(b"".join(clusters[sent:]))
        conn.finish()
        acks += conn.all_acks(timeout=90)
    finally:
        conn.close()
    assert not [a for a in acks if a["EventType"] == "ERROR"], acks[-3:]
    return sorted({a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"})


def replay_sessions(archived, stream: str, start_ms: int, size: int) -> dict[str, str]:
    """One LIVE_REPLAY HLS session per DiscontinuityMode, from start_ms."""
    return {mode: archived.get_hls_streaming_session_url(
        StreamName=stream, PlaybackMode="LIVE_REPLAY", DiscontinuityMode=mode,
        MaxMediaPlaylistFragmentResults=size,
        HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                             "TimestampRange": {"StartTimestamp": start_ms / 1000}},
    )["HLSStreamingSessionURL"] for mode in MODES}


MODES = ("ALWAYS", "NEVER", "ON_DISCONTINUITY")
SIZE, N = 10, 1000  # window (MaxMediaPlaylistFragmentResults); fragments of part 1


@pytest.fixture(scope="module")
def long_archive(server, kvs, archived) -> dict:
    """4N back-to-back 1-ms fragments: part 1 (N) under one header, part 2 (3N) under
    another, with gaps (see timeline). LIVE_REPLAY sessions, one per DiscontinuityMode:
    `deep` from before the first fragment, opened early, so that by the end they list
    the newest fragments 4N deep; `shallow` from fragment 3N, N deep by the end. The
    deep sessions' playlists at the end of part 1 (N deep) are kept."""
    stream, n = "replay-deep", N
    kvs.create_stream(StreamName=stream, DataRetentionInHours=24)
    codec_private, keyframe = tiny_keyframe()
    first_ms = int(time.time() * 1000) - 3600_000
    part1 = timeline(first_ms, n)
    part2 = timeline(part1[-1], 3 * n + 1)[1:]  # continues back to back, 3n more
    starts = part1 + part2
    clusters = [tiny_clusters([t], keyframe) for t in starts]
    urls: dict[str, dict[str, str]] = {}

    def open_deep():  # early, so that pacing runs while the rest is ingested
        urls["deep"] = replay_sessions(archived, stream, first_ms - 1000, SIZE)

    def open_shallow():
        urls["shallow"] = replay_sessions(archived, stream, starts[3 * n], SIZE)

    numbers1 = upload(server.port, stream, tiny_header("part-1", codec_private),
                      clusters[:n], {30: open_deep})
    assert len(numbers1) == n
    at_n = {}
    for mode, url in urls["deep"].items():
        poller = Poller(url)
        try:
            at_n[mode] = poller.until_shown(n, timeout=15)
        finally:
            poller.close()
    numbers2 = upload(server.port, stream, tiny_header("part-2", codec_private),
                      clusters[n:], {2 * n + 5: open_shallow})
    assert len(numbers2) == 3 * n
    return {"stream": stream, "starts": starts, "urls": urls, "at_n": at_n,
            "header_of": {**dict.fromkeys(numbers1, 1), **dict.fromkeys(numbers2, 2)}}


def test_live_replay_window_matches_brute_force(archived, long_archive):
    """Window, EXT-X-MEDIA-SEQUENCE, EXT-X-DISCONTINUITY-SEQUENCE and the markers in the
    window, deep into a long replay, against a count over ListFragments."""
    n, urls = N, long_archive["urls"]
    tips = {}
    for name, depth in (("deep", 4 * n), ("shallow", n)):
        for mode in MODES:
            poller = Poller(urls[name][mode])
            try:
                tips[name, mode] = poller.until_shown(depth, timeout=20)
            finally:
                poller.close()

    fragments = list_all_fragments(archived, long_archive["stream"])
    assert [start_ms(f) for f in fragments] == long_archive["starts"]
    assert {f["FragmentLengthInMilliseconds"] for f in fragments} == {1}
    header_of = long_archive["header_of"]
    for mode in MODES:
        marks = expected_discontinuities(fragments, header_of, mode)
        assert check_window(long_archive["at_n"][mode], fragments, marks, SIZE) == n, mode
        assert check_window(tips["deep", mode], fragments, marks, SIZE) == 4 * n, mode
        shallow_list = fragments[3 * n:]  # the shallow sessions start at fragment 3n
        shallow_marks = expected_discontinuities(shallow_list, header_of, mode)
        assert check_window(tips["shallow", mode], shallow_list, shallow_marks, SIZE) == n

    # the brute force differs by mode: the checks above are not vacuous
    deep = {mode: tips["deep", mode]["discontinuity_sequence"] for mode in MODES}
    assert deep["ALWAYS"] == 4 * n - SIZE
    assert deep["NEVER"] == 1  # the header change
    # part 1's gaps (at 500 and its tail), the header change, part 2's gaps at x500 (3);
    # part 2's own tail gap is inside the window, the gaps within tolerance count nowhere
    assert deep["ON_DISCONTINUITY"] == 2 + 1 + 3
    assert tips["deep", "ON_DISCONTINUITY"]["marked"].count(True) == 1
    assert tips["deep", "ALWAYS"]["marked"].count(True) == SIZE - 1
    assert tips["deep", "NEVER"]["marked"].count(True) == 0
    assert long_archive["at_n"]["ON_DISCONTINUITY"]["discontinuity_sequence"] == 1
    shallow = {mode: tips["shallow", mode]["discontinuity_sequence"] for mode in MODES}
    assert shallow == {"ALWAYS": n - SIZE, "NEVER": 0, "ON_DISCONTINUITY": 1}




def test_live_replay_poll_cost_does_not_grow(long_archive):
    """A poll 4N fragments deep costs about what one N deep does. The two are polled in
    turn, so a busy machine slows both alike."""
    n, urls = N, long_archive["urls"]
    pollers = {(name, mode): Poller(urls[name][mode])
               for name in ("deep", "shallow") for mode in MODES}
    times = {key: [] for key in pollers}
    try:
        for (name, _), poller in pollers.items():
            poller.until_shown(4 * n if name == "deep" else n, timeout=20)
        for _ in range(7):
            for key, poller in pollers.items():
                elapsed, playlist = poller.poll()
                depth = playlist["media_sequence"] + len(playlist["numbers"])
                assert depth == (4 * n if key[0] == "deep" else n), (key, depth)
                assert elapsed < UNBOUNDED_S, f"a poll {depth} deep took {elapsed:.2f} s ({key})"
                times[key].append(elapsed)
    finally:
        for poller in pollers.values():
            poller.close()
    medians = {key: statistics.median(values) for key, values in times.items()}
    for mode in MODES:
        assert medians["deep", mode] < 2 * medians["shallow", mode] + 0.010, medians
