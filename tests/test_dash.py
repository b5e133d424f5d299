"""DASH sessions end to end: the manifest boto3 points at, its segments, and playback.

PyAV's FFmpeg is built without the DASH demuxer (it needs libxml2), so the manifest is
played by a small DASH client here (SegmentTemplate + SegmentTimeline, as kvslite
writes them) and decoded by PyAV; where an `ffprobe` with the DASH demuxer is
installed, FFmpeg's own DASH demuxer plays it too.
"""

from __future__ import annotations

import io
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import av
import numpy as np
import pytest

from kvs_media import psnr, put_mkv
from kvslite.media import synthetic

START_MS = (int(time.time()) - 3 * 3600) * 1000
GAP_MS = 10_000
NS = {"mpd": "urn:mpeg:dash:schema:mpd:2011", "kvs": "urn:aws:kinesisvideo:dash"}


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def archived(server, h264):
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="dash", DataRetentionInHours=24)
    kvs.create_stream(StreamName="dash-gap", DataRetentionInHours=24)
    put_mkv(server.port, "dash", synthetic.to_mkv(h264, START_MS))
    put_mkv(server.port, "dash-gap", synthetic.to_mkv(h264, START_MS))
    put_mkv(server.port, "dash-gap", synthetic.to_mkv(h264, START_MS + GAP_MS))
    return server.client("kinesis-video-archived-media")


def manifest_url(archived, stream="dash", end_ms=START_MS + 3999, **kwargs) -> str:
    return archived.get_dash_streaming_session_url(
        StreamName=stream, PlaybackMode="ON_DEMAND", DASHFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": START_MS / 1000,
                               "EndTimestamp": end_ms / 1000}},
        **kwargs)["DASHStreamingSessionURL"]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def periods(url: str) -> list[tuple[bytes, list[bytes], list[ET.Element]]]:
    """(init segment, media segments, S elements) of each Period, as a player fetches them."""
    mpd = ET.fromstring(fetch(url))
    out = []
    for period in mpd.findall("mpd:Period", NS):
        template = period.find("mpd:AdaptationSet/mpd:Representation/mpd:SegmentTemplate", NS)
        timeline = template.findall("mpd:SegmentTimeline/mpd:S", NS)
        init = fetch(urllib.parse.urljoin(url, template.get("initialization")))
        media = [fetch(urllib.parse.urljoin(url, template.get("media").replace(
            "$Time$", s.get("t")))) for s in timeline]
        out.append((init, media, timeline))
    return out


def decode(init: bytes, media: list[bytes]) -> list[tuple[int, np.ndarray]]:
    with av.open(io.BytesIO(init + b"".join(media))) as container:
        return [(round(f.pts * f.time_base * 1000), f.to_ndarray(format="rgb24"))
                for f in container.decode(video=0)]


def test_on_demand_manifest_plays_every_frame(archived, h264):
    url = manifest_url(archived, DisplayFragmentTimestamp="ALWAYS",
                       DisplayFragmentNumber="ALWAYS")
    assert url.startswith(archived.meta.endpoint_url + "/dash/v1/getDASHManifest.mpd?")
    mpd = ET.fromstring(fetch(url))
    assert mpd.get("type") == "static" and mpd.get("mediaPresentationDuration") == "PT4.000S"
    [(init, media, timeline)] = periods(url)
    assert [int(s.get("d")) for s in timeline] == [1000] * 4
    listed = archived.list_fragments(StreamName="dash")["Fragments"]
    assert [s.get(f"{{{NS['kvs']}}}fn") for s in timeline] == \
        sorted(f["FragmentNumber"] for f in listed)
    assert timeline[0].get(f"{{{NS['kvs']}}}ts") == time.strftime(
        "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(START_MS / 1000))
    frames = decode(init, media)
    reference = h264.frames_rgb()
    assert len(frames) == 100
    assert [pts - frames[0][0] for pts, _ in frames] == [pts for pts, _ in reference]
    for i in (0, 41, 99):
        assert psnr(frames[i][1], reference[i][1]) > 40, i
    start = frames[0][0]  # media time on the session timeline = the first S@t
    assert start == int(timeline[0].get("t"))


def test_gap_starts_a_new_period(archived):
    url = manifest_url(archived, "dash-gap", end_ms=START_MS + GAP_MS + 3999)
    mpd = ET.fromstring(fetch(url))
    assert [p.get("start") for p in mpd.findall("mpd:Period", NS)] == ["PT0.000S", "PT4.000S"]
    assert mpd.get("mediaPresentationDuration") == "PT8.000S"  # the gap is closed
    for init, media, timeline in periods(url):
        assert len(decode(init, media)) == 100


def test_ffmpeg_dash_demuxer_plays_the_manifest(archived):
    """Debian's ffprobe (installed by ./scripts/test) has the DASH demuxer PyAV's lacks."""
    formats = subprocess.run(["ffprobe", "-v", "quiet", "-demuxers"], capture_output=True,
                             text=True).stdout
    assert " dash " in formats
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", manifest_url(archived)],
        capture_output=True, text=True, timeout=60)
    assert set(result.stdout.split()) == {"100"}, result.stderr  # (program and stream)


def test_dash_sessions_validate_like_hls(server, archived):
    from botocore.exceptions import ClientError

    client = server.client("kinesis-video-archived-media", validate=False)
    with pytest.raises(ClientError) as e:
        client.get_dash_streaming_session_url(StreamName="dash", PlaybackMode="ON_DEMAND")
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    with pytest.raises(ClientError) as e:
        manifest_url(client, MaxManifestFragmentResults=0)
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"


def test_live_manifest_is_dynamic(server, archived, h264):
    url = archived.get_dash_streaming_session_url(StreamName="dash-gap")["DASHStreamingSessionURL"]
    mpd = ET.fromstring(fetch(url))
    assert mpd.get("type") == "dynamic" and mpd.get("availabilityStartTime")
    s_elements = mpd.findall(".//mpd:S", NS)
    # LIVE: the newest MaxManifestFragmentResults (5), one segment per distinct start:
    # uploaded at once, fragments can share a server timestamp, and $Time$ names one
    listed = archived.list_fragments(StreamName="dash-gap")["Fragments"]
    newest = sorted(listed, key=lambda f: int(f["FragmentNumber"]))[-5:]
    assert len(s_elements) == len({f["ServerTimestamp"] for f in newest})
    times = [int(s.get("t")) for s in s_elements]
    assert times == sorted(set(times))  # one timeline, never going back


def test_live_manifest_keeps_its_identity_across_refreshes(server, h264):
    """A dynamic MPD's availabilityStartTime, Period ids and starts and the segments'
    times stay put while the window slides, as DASH requires of an updated MPD."""
    server.client("kinesisvideo").create_stream(StreamName="dash-slide",
                                                DataRetentionInHours=1)
    now_ms = int(time.time() * 1000)
    put_mkv(server.port, "dash-slide", synthetic.to_mkv(h264, now_ms - 8000),
            timecode_type="ABSOLUTE")
    archived = server.client("kinesis-video-archived-media")
    url = archived.get_dash_streaming_session_url(
        StreamName="dash-slide", MaxManifestFragmentResults=3, DASHFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP"})["DASHStreamingSessionURL"]
    before = ET.fromstring(fetch(url))
    put_mkv(server.port, "dash-slide", synthetic.to_mkv(h264, now_ms - 4000))
    after = ET.fromstring(fetch(url))

    def identity(mpd):
        [period] = mpd.findall("mpd:Period", NS)
        template = period.find(".//mpd:SegmentTemplate", NS)
        return (mpd.get("availabilityStartTime"), period.get("id"), period.get("start"),
                template.get("presentationTimeOffset"), template.get("initialization"))

    assert identity(before) == identity(after)
    times = [[int(s.get("t")) for s in mpd.findall(".//mpd:S", NS)] for mpd in (before, after)]
    assert len(times[0]) == len(times[1]) == 3
    assert times[1][0] - times[0][0] == 4000  # the window slid by the 4 s added, in place
    assert [b - a for a, b in zip(times[1], times[1][1:])] == [1000, 1000]


def test_live_segments_keep_their_numbers_as_the_window_slides(server, h264):
    """SegmentTemplate@startNumber is the session number of the first listed segment, so
    a segment's number stays the same across refreshes (FFmpeg's DASH demuxer finds its
    place by number, and looped on one segment while numbers restarted at 1)."""
    server.client("kinesisvideo").create_stream(StreamName="dash-numbers",
                                                DataRetentionInHours=1)
    now_ms = int(time.time() * 1000)
    put_mkv(server.port, "dash-numbers", synthetic.to_mkv(h264, now_ms - 8000),
            timecode_type="ABSOLUTE")
    archived = server.client("kinesis-video-archived-media")
    url = archived.get_dash_streaming_session_url(
        StreamName="dash-numbers", MaxManifestFragmentResults=3, DASHFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP"})["DASHStreamingSessionURL"]

    def numbered_times(mpd) -> dict[int, int]:
        template = mpd.find(".//mpd:SegmentTemplate", NS)
        first = int(template.get("startNumber"))
        return {first + i: int(s.get("t")) for i, s in enumerate(mpd.findall(".//mpd:S", NS))}

    before = numbered_times(ET.fromstring(fetch(url)))
    put_mkv(server.port, "dash-numbers", synthetic.to_mkv(h264, now_ms - 4000))
    after = numbered_times(ET.fromstring(fetch(url)))
    assert list(before) == [1, 2, 3]  # the session begins with the newest 3
    assert list(after) == [5, 6, 7]  # 4 segments later, each under its own number
    assert after[5] - before[1] == 4000


def test_live_segment_just_past_the_newest_is_served_once_stored(server, h264):
    """A player (FFmpeg's DASH demuxer) asks for the segment after the newest one listed
    before it exists: the server holds that request until the fragment is stored, instead
    of a 404 the player answers by re-reading the MPD and asking again at once. A time
    that is not the next segment's is a 404 at once."""
    server.client("kinesisvideo").create_stream(StreamName="dash-next", DataRetentionInHours=1)
    now_ms = int(time.time() * 1000)
    put_mkv(server.port, "dash-next", synthetic.to_mkv(h264, now_ms - 8000),
            timecode_type="ABSOLUTE")
    url = server.client("kinesis-video-archived-media").get_dash_streaming_session_url(
        StreamName="dash-next", DASHFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP"})["DASHStreamingSessionURL"]
    template = ET.fromstring(fetch(url)).find(".//mpd:SegmentTemplate", NS)
    newest = template.findall(".//mpd:S", NS)[-1]
    next_time = int(newest.get("t")) + int(newest.get("d"))

    def segment_url(t: int) -> str:
        return urllib.parse.urljoin(url, template.get("media").replace("$Time$", str(t)))

    began = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(segment_url(next_time + 60_000))
    assert e.value.code == 404
    assert e.value.headers["x-amzn-ErrorType"].startswith("ResourceNotFoundException")
    assert time.monotonic() - began < 1  # not held: it is not the next segment

    answer: dict = {}
    held = threading.Thread(target=lambda: answer.update(body=fetch(segment_url(next_time))))
    held.start()
    held.join(0.5)  # no event shows the request is in; it must not be answered meanwhile
    assert held.is_alive()  # the next fragment is not stored yet: held, not a 404
    put_mkv(server.port, "dash-next", synthetic.to_mkv(h264, now_ms - 4000))
    held.join(10)
    init = fetch(urllib.parse.urljoin(url, template.get("initialization")))
    frames = decode(init, [answer["body"]])
    assert len(frames) == 25 and frames[0][0] == next_time  # the fragment stored next
