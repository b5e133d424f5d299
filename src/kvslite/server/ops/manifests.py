"""HLS playlists and DASH manifests: the text a streaming session's pages serve.

Everything written here comes from the archive or from a session token the server issued
itself (base64url characters only), never from request input.
"""

from __future__ import annotations

import time

from kvslite.server.archive import Fragment
from kvslite.server.archive.selection import Window, discontinuity
from kvslite.server.archive.sessions import Session
from kvslite.media import remux
from kvslite.media.mkv import Track


def hls_master(token: str, tracks: list[Track], window: Window) -> str:
    codecs = ",".join(c for c in map(remux.codec_string, tracks) if c)
    video = tracks[0]
    attributes = [f"BANDWIDTH={bandwidth(window.fragments)}", f'CODECS="{codecs}"']
    if video.width and video.height:
        attributes.append(f"RESOLUTION={video.width}x{video.height}")
    return "\n".join(["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS",
                      "#EXT-X-STREAM-INF:" + ",".join(attributes),
                      f"getHLSMediaPlaylist.m3u8?SessionToken={token}", ""])


def hls_media(session: Session, token: str, window: Window) -> str:
    fragments = window.fragments
    mp4 = session.container == "FRAGMENTED_MP4"
    longest = max((f.duration_ms for f in fragments), default=1000)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{7 if mp4 else 3}",
             f"#EXT-X-TARGETDURATION:{max(1, -(-longest // 1000))}",
             f"#EXT-X-MEDIA-SEQUENCE:{window.first_index}",
             f"#EXT-X-DISCONTINUITY-SEQUENCE:{window.discontinuities_before}",
             "#EXT-X-INDEPENDENT-SEGMENTS"]
    if session.mode == "ON_DEMAND":
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    previous = None
    for fragment in fragments:
        query = f"SessionToken={token}&FragmentNumber={fragment.number}"
        if previous is not None and discontinuity(session, previous, fragment):
            lines.append("#EXT-X-DISCONTINUITY")
        if mp4 and (previous is None or previous.header_id != fragment.header_id):
            lines.append(f'#EXT-X-MAP:URI="getMP4InitFragment.mp4?{query}"')
        if session.show_timestamps:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{iso_time(session.start(fragment))}")
        lines.append(f"#EXTINF:{fragment.duration_ms / 1000:.3f},")
        lines.append(f"getMP4MediaFragment.mp4?{query}" if mp4 else f"getTSFragment.ts?{query}")
        previous = fragment
    if window.complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines + [""])


def dash_manifest(session: Session, token: str, tracks: list[Track], window: Window,
                  now_ms: int) -> str:
    """One Period per run of fragments without a discontinuity (gap, overlap, new
    codec data): each Period's media keeps its true timestamps, and the presentation
    timeline plays the runs back to back, as AWS adjusts its DASH timeline.
    Segments are addressed by their time ($Time$, the S@t of the SegmentTimeline)."""
    video = tracks[0]
    codecs = ",".join(c for c in map(remux.codec_string, tracks) if c)
    size = f' width="{video.width}" height="{video.height}"' if video.width else ""
    periods, elapsed = [], 0
    for run in _runs(session, window.fragments):
        first = run[0]
        pto = session.start(first) - session.origin_ms
        init = f"getMP4InitFragment.mp4?SessionToken={token}&amp;FragmentNumber={first.number}"
        media = f"getMP4MediaFragment.mp4?SessionToken={token}&amp;FragmentTime=$Time$"
        timeline = [f'<S t="{session.start(f) - session.origin_ms}" d="{f.duration_ms}"'
                    + (f' kvs:ts="{iso_time(session.start(f))}"' if session.show_timestamps
                       else "")
                    + (f' kvs:fn="{f.number}"' if session.show_numbers else "") + "/>"
                    for f in run]
        periods.append(
            f'<Period id="{first.number}" start="{_duration(elapsed)}">'
            f'<AdaptationSet mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">'
            f'<Representation id="1" codecs="{codecs}" bandwidth="{bandwidth(run)}"{size}>'
            f'<SegmentTemplate timescale="1000" presentationTimeOffset="{pto}" '
            f'initialization="{init}" media="{media}">'
            f'<SegmentTimeline>{"".join(timeline)}</SegmentTimeline>'
            f"</SegmentTemplate></Representation></AdaptationSet></Period>")
        elapsed += session.start(run[-1]) + run[-1].duration_ms - session.start(first)
    if window.complete:
        timing = f'type="static" mediaPresentationDuration="{_duration(elapsed)}"'
    else:  # the live edge, where the newest listed media ends, is now
        timing = (f'type="dynamic" availabilityStartTime="{iso_time(now_ms - elapsed)}" '
                  f'publishTime="{iso_time(now_ms)}" minimumUpdatePeriod="PT1S" '
                  f'timeShiftBufferDepth="{_duration(max(elapsed, 1000))}"')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:kvs="urn:aws:kinesisvideo:dash" '
            f'profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT2S" {timing}>'
            + "".join(periods) + "</MPD>\n")


def _runs(session: Session, fragments: list[Fragment]) -> list[list[Fragment]]:
    """Split where a discontinuity is (DASH sessions use ON_DISCONTINUITY)."""
    runs: list[list[Fragment]] = []
    for fragment in fragments:
        if not runs or discontinuity(session, runs[-1][-1], fragment):
            runs.append([])
        runs[-1].append(fragment)
    return runs


def _duration(ms: int) -> str:
    return f"PT{ms / 1000:.3f}S"


def bandwidth(fragments: list[Fragment]) -> int:
    """Peak bits per second over the fragments (HLS BANDWIDTH, DASH @bandwidth)."""
    return max((f.size * 8000 // max(1, f.duration_ms) for f in fragments), default=1_000_000)


def iso_time(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"

