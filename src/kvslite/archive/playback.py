"""Playback: GetClip, HLS and DASH sessions over the archive.

A streaming session lives entirely in its token: the stream, the parameters and a
timeline origin, HMAC-signed with a server secret so it can be neither forged nor
altered, and expiring. Every session puts media on one timeline: milliseconds since
`origin` on the session's clock (producer or server), so segments built separately
line up. Fragments are selected by overlap: a fragment belongs to [start, end] when
its span [start, start + duration) meets the range.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass

from kvslite.archive.fragments import Archive, unpack_frames
from kvslite.errors import ApiError
from kvslite.media import remux
from kvslite.store.metadata import Fragment

MAX_FRAGMENT_SPAN_MS = 60_000  # longer than any fragment ingest accepts
ORIGIN_LEAD_MS = MAX_FRAGMENT_SPAN_MS  # timeline zero sits this far before the first media
MAX_REORDER_MS = ORIGIN_LEAD_MS // 2  # frames may be decoded this long before shown
SCAN_WINDOW_MS = 10 * 60_000  # range queries read the index this much at a time
GAP_TOLERANCE_MS = 50  # AWS: a gap or overlap beyond this is a discontinuity
LIVE_RECENT_MS = 30_000  # LIVE sessions need a fragment this recent
_MAC_BYTES = 16


@dataclass(frozen=True)
class Session:
    """Everything a session token carries (field order is the token format)."""

    protocol: str  # "HLS" | "DASH"
    stream_arn: str
    mode: str  # "LIVE" | "LIVE_REPLAY" | "ON_DEMAND"
    clock: str  # "producer_ms" | "server_ms"
    start_ms: int | None
    end_ms: int | None
    container: str  # "FRAGMENTED_MP4" | "MPEG_TS"
    discontinuity: str  # "ALWAYS" | "NEVER" | "ON_DISCONTINUITY"
    show_timestamps: bool
    show_numbers: bool  # DASH kvs:fn
    max_results: int
    origin_ms: int  # timeline zero, on the session's clock
    first_seq: int  # LIVE: the oldest fragment the session may serve
    created_ms: int  # wall clock
    expires_ms: int  # wall clock
    nonce: str

    def start(self, fragment: Fragment) -> int:
        return getattr(fragment, self.clock)

    def covers(self, fragment: Fragment) -> bool:
        """Whether the session may serve this fragment of its stream."""
        start = self.start(fragment)
        if start - self.origin_ms < MAX_REORDER_MS:
            return False  # would land before the timeline's zero
        if self.mode == "LIVE":
            return fragment.seq >= self.first_seq
        return overlaps(fragment, start, self.start_ms, self.end_ms)


class SessionTokens:
    """Issue and check session tokens: base64url(MAC || payload)."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time):
        self.key = key
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def new(self, expires_s: int, **values) -> Session:
        now = self.now_ms()
        return Session(created_ms=now, expires_ms=now + expires_s * 1000,
                       nonce=secrets.token_hex(6), **values)

    def issue(self, session: Session) -> str:
        payload = json.dumps(astuple(session), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode().rstrip("=")

    def check(self, token: str | None, protocol: str) -> Session:
        if not token:
            raise ApiError("MissingParameter", "SessionToken is required", status=400)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raw = b""
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise _unauthorized("The session token is not valid")
        session = Session(*json.loads(payload))
        if session.protocol != protocol:
            raise _unauthorized(f"The session token is not valid for {protocol}")
        if self.now_ms() >= session.expires_ms:
            raise _unauthorized("The session token has expired")
        return session

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _unauthorized(message: str) -> ApiError:
    # AWS documents "Status Code: 403" for this error; its model says 401
    return ApiError("NotAuthorizedException", message, status=403)


# ----------------------------------------------------------------------- selection

def overlaps(fragment: Fragment, start: int, range_start: int | None,
             range_end: int | None) -> bool:
    after_start = range_start is None or start + fragment.duration_ms > range_start
    return after_start and (range_end is None or start <= range_end)


def fragments_in_range(archive: Archive, arn: str, clock: str, start_ms: int,
                       end_ms: int | None) -> Iterator[Fragment]:
    """Fragments overlapping [start_ms, end_ms] in time order, read a window at a time.

    Fragments with the same start on the producer clock are one: the newest wins (AWS).
    """
    end_ms = end_ms if end_ms is not None else int(time.time() * 1000) + MAX_FRAGMENT_SPAN_MS
    low = start_ms
    while low <= end_ms:
        high = min(end_ms, low + SCAN_WINDOW_MS)
        batch = archive.store.fragments_overlapping(arn, clock, low, high,
                                                    MAX_FRAGMENT_SPAN_MS)
        batch = [f for f in batch if getattr(f, clock) >= low or low == start_ms]
        if clock == "producer_ms":
            newest = {f.producer_ms: f for f in sorted(batch, key=lambda f: f.seq)}
            batch = sorted(newest.values(), key=lambda f: (f.producer_ms, f.seq))
        yield from batch
        low = high + 1


def live_window(archive: Archive, session: Session) -> list[Fragment]:
    """The newest fragments of a LIVE session, oldest first, on an increasing timeline."""
    store = archive.store
    latest = store.latest_fragment(session.stream_arn)
    if latest is None:
        return []
    after = max(session.first_seq - 1, latest.seq - session.max_results)
    window: list[Fragment] = []
    for fragment in store.list_fragments(session.stream_arn, after_seq=after,
                                         limit=session.max_results):
        if session.covers(fragment) and (
                not window or session.start(fragment) >= session.start(window[-1])):
            window.append(fragment)  # AWS: never a fragment older than the newest listed
    return window


# -------------------------------------------------------------------------- media

def check_playable(archive: Archive, fragment: Fragment) -> None:
    """AWS's track requirements for MP4/TS playback, as its errors."""
    tracks = remux.parse_header(archive.header(fragment.header_id)).tracks
    if not tracks or tracks[0].codec_id not in remux.PLAYABLE_CODECS or \
            any(t.codec_id not in remux.PLAYABLE_CODECS for t in tracks):
        codecs = ", ".join(t.codec_id for t in tracks)
        raise ApiError("UnsupportedStreamMediaTypeException",
                       f"Tracks ({codecs}) cannot be played back: track 1 must be H.264 "
                       f"(V_MPEG4/ISO/AVC) or H.265 (V_MPEGH/ISO/HEVC), others AAC")
    for track in tracks:
        if track.codec_id in remux.NEEDS_CODEC_PRIVATE and not track.codec_private:
            raise ApiError("MissingCodecPrivateDataException",
                           f"Track {track.number} ({track.codec_id}) has no codec private data")
        if track.codec_id != "A_AAC" and track.codec_private[:1] != b"\x01":
            raise ApiError("InvalidCodecPrivateDataException",
                           f"Track {track.number} codec private data is not in "
                           f"ISO/IEC 14496-15 (avcC/hvcC) format")


def fragment_samples(archive: Archive, fragment: Fragment, start_ms: int, origin_ms: int,
                     delay: int | None = None) -> list[remux.Sample]:
    """The fragment's frames on a timeline where `origin_ms` is zero and the fragment
    starts at `start_ms` (its start on the chosen clock)."""
    entries = unpack_frames(fragment.frames)
    blob = archive.cluster_bytes(fragment)
    base = start_ms - origin_ms
    times = remux.decode_times([(e.track, base + e.offset_ms) for e in entries],
                               base + fragment.duration_ms, delay)
    return [remux.Sample(e.track, base + e.offset_ms, t.dts, t.duration, e.keyframe,
                         blob[e.payload_offset:e.payload_offset + e.size])
            for e, t in zip(entries, times)]


def segment(archive: Archive, session: Session, fragment: Fragment, kind: str) -> bytes:
    """One media segment: 'mp4' (moof+mdat) or 'ts', on the session's timeline."""
    header = archive.header(fragment.header_id)
    samples = fragment_samples(archive, fragment, session.start(fragment), session.origin_ms)
    if kind == "ts":
        return remux.mpeg_ts(header, samples)
    return remux.fragmented_mp4(header, samples)[1]


def clip_delay(fragments: list[Fragment]) -> int:
    """One reordering delay for a whole clip, so decode times never go backwards."""
    delays = [0]
    for fragment in fragments:
        by_track: dict[int, list[int]] = {}
        for entry in unpack_frames(fragment.frames):
            by_track.setdefault(entry.track, []).append(entry.offset_ms)
        delays += [remux.reorder_delay(pts) for pts in by_track.values()]
    return max(delays)


# ------------------------------------------------------------------ what is listed

@dataclass
class Window:
    """The fragments a playlist/manifest lists now, and where they sit in the session."""

    fragments: list[Fragment]
    first_index: int  # session position of fragments[0] (HLS media sequence)
    discontinuities_before: int  # markers before fragments[0] (HLS discontinuity sequence)
    complete: bool  # nothing will ever be added (ENDLIST / static manifest)


def session_window(archive: Archive, session: Session, now_ms: int) -> Window:
    if session.mode == "LIVE":
        fragments = live_window(archive, session)
        first = fragments[0].seq - session.first_seq if fragments else 0
        before = first if session.discontinuity == "ALWAYS" else 0
        return Window(fragments, first, before, False)
    listed = []
    for fragment in fragments_in_range(archive, session.stream_arn, session.clock,
                                       session.start_ms, session.end_ms):
        if session.covers(fragment):
            listed.append(fragment)
        if session.mode == "ON_DEMAND" and len(listed) == session.max_results:
            return Window(listed, 0, 0, True)
    if session.mode == "ON_DEMAND":
        return Window(listed, 0, 0, True)
    return _replay_window(session, listed, now_ms)


def _replay_window(session: Session, listed: list[Fragment], now_ms: int) -> Window:
    """LIVE_REPLAY: the first page at once, then one fragment per fragment duration."""
    if not listed:
        return Window([], 0, 0, False)
    seed = listed[min(len(listed), session.max_results) - 1]
    paced_from = session.start(seed)
    elapsed = now_ms - session.created_ms
    shown = [f for f in listed if session.start(f) - paced_from <= elapsed]
    first = len(shown) - min(len(shown), session.max_results)
    before = sum(discontinuity(session, a, b) for a, b in zip(shown[:first], shown[1:first + 1]))
    complete = session.end_ms is not None and len(shown) == len(listed) and \
        now_ms > session.end_ms
    return Window(shown[first:], first, before, complete)


def discontinuity(session: Session, previous: Fragment, fragment: Fragment) -> bool:
    if previous.header_id != fragment.header_id or session.discontinuity == "ALWAYS":
        return True
    if session.discontinuity == "NEVER":
        return False
    gap = session.start(fragment) - (session.start(previous) + previous.duration_ms)
    return abs(gap) > GAP_TOLERANCE_MS


# ------------------------------------------------------------- playlists, manifest

def hls_master(token: str, header: bytes, window: Window) -> str:
    tracks = remux.parse_header(header).tracks
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


def dash_manifest(session: Session, token: str, header: bytes, window: Window,
                  now_ms: int) -> str:
    """One Period per run of fragments without a discontinuity (gap, overlap, new
    codec data): each Period's media keeps its true timestamps, and the presentation
    timeline plays the runs back to back, as AWS adjusts its DASH timeline.
    Segments are addressed by their time ($Time$, the S@t of the SegmentTimeline)."""
    tracks = remux.parse_header(header).tracks
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
