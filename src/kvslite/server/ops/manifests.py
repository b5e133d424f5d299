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
                  now_ms: int, available_ms: int | None = None) -> str:
    """A static MPD for ON_DEMAND and LIVE_REPLAY's finished windows, a dynamic one while
    fragments may still be added. Segments are addressed by their time ($Time$, the S@t
    of the SegmentTimeline). `available_ms` is the wall-clock time of the session's
    timeline zero (its origin), which a dynamic MPD announces as availabilityStartTime."""
    if window.complete:
        periods, elapsed = _static_periods(session, token, tracks, window.fragments)
        timing = f'type="static" mediaPresentationDuration="{_duration(elapsed)}"'
    else:
        periods, span = _dynamic_periods(session, token, tracks, window)
        origin = session.origin_ms if available_ms is None else available_ms
        timing = (f'type="dynamic" availabilityStartTime="{iso_time(origin)}" '
                  f'publishTime="{iso_time(now_ms)}" minimumUpdatePeriod="PT1S" '
                  f'timeShiftBufferDepth="{_duration(max(span, 1000))}"')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:kvs="urn:aws:kinesisvideo:dash" '
            f'profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT2S" {timing}>'
            + "".join(periods) + "</MPD>\n")


def _static_periods(session: Session, token: str, tracks: list[Track],
                    fragments: list[Fragment]) -> tuple[list[str], int]:
    """One Period per run of fragments without a discontinuity (gap, overlap, new
    codec data): each Period's media keeps its true timestamps, and the presentation
    timeline plays the runs back to back, as AWS adjusts its DASH timeline.
    Returns the Periods and the presentation's duration."""
    periods, elapsed = [], 0
    for run in _runs(session, fragments):
        first = run[0]
        times = [session.start(f) - session.origin_ms for f in run]
        periods.append(_period(session, token, tracks, run, times, first.number,
                               elapsed, times[0], first.number))
        elapsed += times[-1] + run[-1].duration_ms - times[0]
    return periods, elapsed


def _dynamic_periods(session: Session, token: str, tracks: list[Track],
                     window: Window) -> tuple[list[str], int]:
    """A live MPD keeps one timeline for the whole session, so each refresh only adds
    segments at the end and drops them at the start: every segment at its time since
    the session's origin, a gap a jump in S@t. Presentation time 0 is the origin, where
    the session's media begins (GStreamer's dashdemux loses its place when the first
    segment sits a minute into the Period). A new Period only where the codec data
    changes, identified by its stored header. Segments keep their number in the session
    too (startNumber): FFmpeg's DASH demuxer finds its place by number after each
    refresh, and loops on one segment if numbers restart at 1.
    Returns the Periods and the time span they list."""
    periods = []
    fragments = window.fragments
    number = window.first_index + 1  # the session's first segment is number 1
    for i, run in enumerate(_header_runs(fragments)):
        times = [session.start(f) - session.origin_ms for f in run]
        offset = 0 if i == 0 else times[0]
        periods.append(_period(session, token, tracks, run, times, str(run[0].header_id),
                               offset, offset,
                               None if i == 0 else run[0].number, number))
        number += len(run)
    if not fragments:
        return periods, 0
    return periods, (session.start(fragments[-1]) + fragments[-1].duration_ms
                     - session.start(fragments[0]))


def _period(session: Session, token: str, tracks: list[Track], run: list[Fragment],
            times: list[int], period_id: str, start: int, offset: int,
            init_number: str | None, start_number: int | None = None) -> str:
    """A Period whose segments start at `times` on the session timeline, shown from
    `start` on the presentation timeline (media time `offset` plays at `start`), its
    first segment numbered `start_number` (1 when None, as DASH defaults)."""
    video = tracks[0]
    codecs = ",".join(c for c in map(remux.codec_string, tracks) if c)
    size = f' width="{video.width}" height="{video.height}"' if video.width else ""
    init = f"getMP4InitFragment.mp4?SessionToken={token}" + (
        f"&amp;FragmentNumber={init_number}" if init_number else "")
    media = f"getMP4MediaFragment.mp4?SessionToken={token}&amp;FragmentTime=$Time$"
    numbered = f' startNumber="{start_number}"' if start_number is not None else ""
    return (f'<Period id="{period_id}" start="{_duration(start)}">'
            f'<AdaptationSet mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">'
            f'<Representation id="1" codecs="{codecs}" bandwidth="{bandwidth(run)}"{size}>'
            f'<SegmentTemplate timescale="1000" presentationTimeOffset="{offset}"{numbered} '
            f'initialization="{init}" media="{media}">'
            f'<SegmentTimeline>{_timeline(session, run, times)}</SegmentTimeline>'
            f"</SegmentTemplate></Representation></AdaptationSet></Period>")


def _timeline(session: Session, run: list[Fragment], times: list[int]) -> str:
    """S elements; a segment that overlaps the next one is cut where the next starts,
    so the timeline never goes back (server timestamps jitter by a few ms)."""
    out = []
    for i, (fragment, t) in enumerate(zip(run, times)):
        following = times[i + 1] if i + 1 < len(times) else None
        d = fragment.duration_ms
        if following is not None and following <= t:
            continue  # the same start as the next: $Time$ addresses only one of them
        if following is not None:
            d = min(d, following - t)
        out.append(f'<S t="{t}" d="{d}"'
                   + (f' kvs:ts="{iso_time(session.start(fragment))}"'
                      if session.show_timestamps else "")
                   + (f' kvs:fn="{fragment.number}"' if session.show_numbers else "") + "/>")
    return "".join(out)


def _header_runs(fragments: list[Fragment]) -> list[list[Fragment]]:
    """Split where the codec data (the stored header) changes."""
    runs: list[list[Fragment]] = []
    for fragment in fragments:
        if not runs or runs[-1][-1].header_id != fragment.header_id:
            runs.append([])
        runs[-1].append(fragment)
    return runs


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

