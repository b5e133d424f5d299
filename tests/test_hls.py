"""HLS sessions end to end: boto3 gets the URL, FFmpeg's HLS demuxer plays it over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import av
import numpy as np
import pytest

from conftest import refusal
from kvs_media import psnr, put_mkv
from kvslite.media import synthetic

START_MS = (int(time.time()) - 3 * 3600) * 1000
GAP_MS = 10_000  # the second copy on hls-gap starts this long after the first


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


@pytest.fixture(scope="module")
def streams(server, h264):
    kvs = server.client("kinesisvideo")
    for name in ("hls", "hls-gap", "hls-live", "hls-empty"):
        kvs.create_stream(StreamName=name, DataRetentionInHours=24)
    kvs.create_stream(StreamName="hls-noretention", DataRetentionInHours=0)
    put_mkv(server.port, "hls", synthetic.to_mkv(h264, START_MS))
    put_mkv(server.port, "hls-gap", synthetic.to_mkv(h264, START_MS))
    put_mkv(server.port, "hls-gap", synthetic.to_mkv(h264, START_MS + GAP_MS))


def session_url(archived, stream="hls", start_ms=START_MS, end_ms=START_MS + 3999,
                mode="ON_DEMAND", selector="PRODUCER_TIMESTAMP", **kwargs) -> str:
    if mode != "LIVE":
        kwargs["HLSFragmentSelector"] = {"FragmentSelectorType": selector, "TimestampRange": {
            "StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000}}
    return archived.get_hls_streaming_session_url(StreamName=stream, PlaybackMode=mode,
                                                  **kwargs)["HLSStreamingSessionURL"]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def media_playlist(master_url: str) -> str:
    return fetch(master_url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"))


def http_error(url: str) -> tuple[int, str, str]:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    body = json.loads(e.value.read())
    return e.value.code, e.value.headers["x-amzn-ErrorType"], body["message"]


def decoded(url: str) -> list[tuple[int, np.ndarray]]:
    """(pts ms, RGB) of every frame FFmpeg's HLS demuxer gets out of the session."""
    with av.open(url, timeout=10) as container:
        return [(round(f.pts * f.time_base * 1000), f.to_ndarray(format="rgb24"))
                for f in container.decode(video=0)]


@pytest.mark.slow
@pytest.mark.parametrize("container", ["FRAGMENTED_MP4", "MPEG_TS"])
def test_on_demand_plays_every_frame(archived, streams, h264, container):
    url = session_url(archived, ContainerFormat=container)
    assert url.startswith(archived.meta.endpoint_url + "/hls/v1/getHLSMasterPlaylist.m3u8?")
    frames = decoded(url)
    reference = h264.frames_rgb()
    assert len(frames) == len(reference) == 100
    first = frames[0][0]
    assert [pts - first for pts, _ in frames] == [pts for pts, _ in reference]
    for i in (0, 12, 37, 99):
        assert psnr(frames[i][1], reference[i][1]) > 40, i


@pytest.mark.slow
def test_h265(server, archived, streams):
    h265 = synthetic.encode_video("h265", seconds=2, gop=25, bframes=2)
    server.client("kinesisvideo").create_stream(StreamName="hls-h265", DataRetentionInHours=1)
    put_mkv(server.port, "hls-h265", synthetic.to_mkv(h265, START_MS))
    for container in ("FRAGMENTED_MP4", "MPEG_TS"):
        url = session_url(archived, "hls-h265", end_ms=START_MS + 1999,
                          ContainerFormat=container)
        assert 'CODECS="hvc1.' in fetch(url)
        frames = decoded(url)
        assert len(frames) == 50
        assert psnr(frames[33][1], h265.frames_rgb()[33][1]) > 40


def test_playlists(archived, streams, h264):
    url = session_url(archived, DisplayFragmentTimestamp="ALWAYS")
    master = fetch(url)
    assert '#EXT-X-STREAM-INF:BANDWIDTH=' in master and 'CODECS="avc1.' in master
    assert "RESOLUTION=320x240" in master
    playlist = media_playlist(url)
    lines = playlist.splitlines()
    assert lines[0] == "#EXTM3U" and lines[-1] == "#EXT-X-ENDLIST"
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in lines and "#EXT-X-TARGETDURATION:1" in lines
    assert lines.count("#EXTINF:1.000,") == 4
    assert sum(line.startswith("#EXT-X-MAP:URI=") for line in lines) == 1
    assert [line for line in lines if line.startswith("#EXT-X-PROGRAM-DATE-TIME")] == [
        "#EXT-X-PROGRAM-DATE-TIME:" + time.strftime(
            "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(START_MS / 1000 + s)) for s in range(4)]
    assert "#EXT-X-DISCONTINUITY\n" not in playlist  # PRODUCER_TIMESTAMP: NEVER by default


@pytest.mark.parametrize("mode, markers", [("NEVER", 0), ("ON_DISCONTINUITY", 1),
                                           ("ALWAYS", 7)])
def test_gap_becomes_a_discontinuity(archived, streams, mode, markers):
    url = session_url(archived, "hls-gap", end_ms=START_MS + GAP_MS + 3999,
                      DiscontinuityMode=mode)
    playlist = media_playlist(url)
    assert playlist.count("#EXTINF:") == 8
    assert playlist.count("#EXT-X-DISCONTINUITY\n") == markers
    if mode == "ON_DISCONTINUITY":  # it sits between the 4th and the 5th segment
        before, after = playlist.split("#EXT-X-DISCONTINUITY\n")
        assert before.count("#EXTINF:") == 4 and after.count("#EXTINF:") == 4


def test_gap_plays_through(archived, streams):
    url = session_url(archived, "hls-gap", end_ms=START_MS + GAP_MS + 3999,
                      DiscontinuityMode="ON_DISCONTINUITY", ContainerFormat="MPEG_TS")
    frames = decoded(url)
    assert len(frames) == 200
    assert frames[100][0] - frames[0][0] == GAP_MS  # media keeps the producer timeline


def test_live_playlist_grows(server, archived, streams, h264):
    put_mkv(server.port, "hls-live", synthetic.to_mkv(h264, START_MS))
    url = session_url(archived, "hls-live", mode="LIVE", MaxMediaPlaylistFragmentResults=6)
    first = media_playlist(url)
    assert first.count("#EXTINF:") == 4 and "#EXT-X-ENDLIST" not in first
    assert "#EXT-X-MEDIA-SEQUENCE:0" in first
    assert first.count("#EXT-X-DISCONTINUITY\n") == 3  # SERVER_TIMESTAMP: ALWAYS
    put_mkv(server.port, "hls-live", synthetic.to_mkv(h264, START_MS + 4000))
    second = media_playlist(url)
    numbers = [line.rsplit("=", 1)[1] for line in second.splitlines()
               if line.startswith("getMP4MediaFragment")]
    assert len(numbers) == 6 and "#EXT-X-ENDLIST" not in second  # the newest 6 of 8
    assert "#EXT-X-MEDIA-SEQUENCE:2" in second
    listed = archived.list_fragments(StreamName="hls-live")["Fragments"]
    assert numbers == sorted(f["FragmentNumber"] for f in listed)[2:]
    segment = urllib.request.urlopen(
        url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4")
        + f"&FragmentNumber={numbers[-1]}").read()
    assert segment[4:8] == b"moof"


@pytest.mark.slow
def test_live_replay_adds_a_fragment_per_fragment_duration(archived, streams):
    url = session_url(archived, mode="LIVE_REPLAY", MaxMediaPlaylistFragmentResults=2)
    first = media_playlist(url)
    assert first.count("#EXTINF:") == 2 and "#EXT-X-MEDIA-SEQUENCE:0" in first
    assert "#EXT-X-ENDLIST" not in first
    # one more 1-s fragment is due a second into the session; the window of 2 slides by
    # one. Poll for that change (a fixed sleep could land past the next slide, too)
    deadline = time.monotonic() + 10
    second = media_playlist(url)
    while "#EXT-X-MEDIA-SEQUENCE:0" in second and time.monotonic() < deadline:
        time.sleep(0.05)
        second = media_playlist(url)
    assert second.count("#EXTINF:") == 2 and "#EXT-X-MEDIA-SEQUENCE:1" in second
    segments = [[line for line in playlist.splitlines() if line.startswith("getMP4")]
                for playlist in (first, second)]
    assert segments[1][0] == segments[0][1]  # the window slid by one fragment
    assert "#EXT-X-ENDLIST" not in second


def test_tampered_foreign_and_misused_tokens(server, archived, streams):
    url = session_url(archived, end_ms=START_MS + 1999)
    token = url.split("SessionToken=")[1]
    flipped = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    assert http_error(url.replace(token, flipped))[:2] == (403, "NotAuthorizedException")
    assert http_error(url.replace(token, token[:-3]))[:2] == (403, "NotAuthorizedException")
    dash = url.replace("/hls/v1/getHLSMasterPlaylist.m3u8", "/dash/v1/getDASHManifest.mpd")
    assert http_error(dash)[:2] == (403, "NotAuthorizedException")
    assert http_error(url.split("?")[0])[:2] == (400, "MissingParameter")
    segment = url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4")
    listed = archived.list_fragments(StreamName="hls")["Fragments"]
    numbers = sorted(f["FragmentNumber"] for f in listed)
    assert urllib.request.urlopen(f"{segment}&FragmentNumber={numbers[1]}").status == 200
    # outside the session's range, or not a fragment of its stream at all
    assert http_error(f"{segment}&FragmentNumber={numbers[3]}")[:2] == \
        (404, "ResourceNotFoundException")
    assert http_error(f"{segment}&FragmentNumber=9{'0' * 45}99")[:2] == \
        (404, "ResourceNotFoundException")


def test_token_from_another_server_is_refused(server, archived, streams):
    from kvslite.server.archive.sessions import SessionTokens

    url = session_url(archived)
    token = url.split("SessionToken=")[1]
    other_server = SessionTokens(b"k" * 32)  # same session, another server's secret
    forged = other_server.issue(_decode(token))
    assert http_error(url.replace(token, forged))[:2] == (403, "NotAuthorizedException")


def _decode(token: str):
    """The session inside a token (the payload is signed, not secret)."""
    import base64

    from kvslite.server.archive.sessions import Session

    from dataclasses import replace

    from kvslite.server.archive import Clock

    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    session = Session(*json.loads(raw[16:]))
    return replace(session, clock=Clock(session.clock))


def test_tokens_expire():
    from kvslite.server.archive import Clock
    from kvslite.server.archive.sessions import SessionTokens
    from kvslite.server.api_errors import ApiError

    now = [1_700_000_000.0]
    tokens = SessionTokens(b"s" * 32, clock=lambda: now[0])
    session = tokens.new(300, protocol="HLS", stream_arn="arn", mode="LIVE",
                         clock=Clock.SERVER, start_ms=None, end_ms=None,
                         container="FRAGMENTED_MP4", discontinuity="ALWAYS",
                         show_timestamps=False, show_numbers=False, max_results=5,
                         origin_ms=0, first_seq=1)
    token = tokens.issue(session)
    now[0] += 299.9
    assert tokens.check(token, "HLS") == session
    now[0] += 0.1
    with pytest.raises(ApiError) as e:
        tokens.check(token, "HLS")
    assert (e.value.code, e.value.status) == ("NotAuthorizedException", 403)
    assert "expired" in e.value.message


def test_expires_is_carried(archived, streams):
    url = session_url(archived, Expires=43200)
    session = _decode(url.split("SessionToken=")[1])
    assert session.expires_ms - session.created_ms == 43200 * 1000


def error_code(client, **params) -> tuple[str, int]:
    return refusal(client.get_hls_streaming_session_url, **params)[:2]


def selector(start_ms=START_MS, end_ms=START_MS + 3999, kind="PRODUCER_TIMESTAMP"):
    timestamps = {"StartTimestamp": start_ms / 1000}
    if end_ms is not None:
        timestamps["EndTimestamp"] = end_ms / 1000
    return {"FragmentSelectorType": kind, "TimestampRange": timestamps}


@pytest.mark.parametrize("params", [
    {"PlaybackMode": "ON_DEMAND"},                                        # no selector
    {"PlaybackMode": "ON_DEMAND", "HLSFragmentSelector": selector(end_ms=None)},
    {"PlaybackMode": "LIVE_REPLAY",
     "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP"}},
    {"PlaybackMode": "LIVE", "HLSFragmentSelector": selector()},          # LIVE has no range
    {"PlaybackMode": "ON_DEMAND", "HLSFragmentSelector": selector(end_ms=START_MS)},
    {"PlaybackMode": "ON_DEMAND",
     "HLSFragmentSelector": selector(end_ms=START_MS + 24 * 3600_000 + 1)},
    {"PlaybackMode": "ON_DEMAND", "HLSFragmentSelector": selector(), "Expires": 299},
    {"PlaybackMode": "ON_DEMAND", "HLSFragmentSelector": selector(),
     "MaxMediaPlaylistFragmentResults": 5001},
    {"PlaybackMode": "ON_DEMAND", "HLSFragmentSelector": selector(),
     "ContainerFormat": "MKV"},
])
def test_invalid_arguments(server, streams, params):
    client = server.client("kinesis-video-archived-media", validate=False)
    assert error_code(client, StreamName="hls", **params) == ("InvalidArgumentException", 400)


def test_stream_errors(archived, streams):
    on_demand = {"PlaybackMode": "ON_DEMAND", "HLSFragmentSelector": selector()}
    assert error_code(archived, StreamName="hls-empty", **on_demand) == \
        ("ResourceNotFoundException", 404)
    assert error_code(archived, StreamName="hls-empty", PlaybackMode="LIVE") == \
        ("ResourceNotFoundException", 404)
    assert error_code(archived, StreamName="hls-nope", **on_demand) == \
        ("ResourceNotFoundException", 404)
    assert error_code(archived, StreamName="hls-noretention", **on_demand) == \
        ("NoDataRetentionException", 400)
