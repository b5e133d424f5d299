"""Media segments for playback: stored frames placed on a session's or clip's timeline.

Matroska keeps presentation times only; decode times are derived from them (B-frames
included), so the producer's (or server's) timing is kept exactly.
"""

from __future__ import annotations

from kvslite.server.archive.fragments import Archive, unpack_frames
from kvslite.server.archive.sessions import Session
from kvslite.server.api_errors import (
    INVALID_CODEC_PRIVATE_DATA,
    MISSING_CODEC_PRIVATE_DATA,
    UNSUPPORTED_STREAM_MEDIA_TYPE,
    ApiError,
)
from kvslite.media import remux
from kvslite.server.store.metadata import Fragment


def check_playable(archive: Archive, fragment: Fragment) -> None:
    """AWS's track requirements for MP4/TS playback, as its errors."""
    tracks = archive.tracks(fragment.header_id)
    if not tracks or tracks[0].codec_id not in remux.PLAYABLE_CODECS or \
            any(t.codec_id not in remux.PLAYABLE_CODECS for t in tracks):
        codecs = ", ".join(t.codec_id for t in tracks)
        raise ApiError(UNSUPPORTED_STREAM_MEDIA_TYPE,
                       f"Tracks ({codecs}) cannot be played back: track 1 must be H.264 "
                       f"(V_MPEG4/ISO/AVC) or H.265 (V_MPEGH/ISO/HEVC), others AAC")
    for track in tracks:
        if track.codec_id in remux.NEEDS_CODEC_PRIVATE and not track.codec_private:
            raise ApiError(MISSING_CODEC_PRIVATE_DATA,
                           f"Track {track.number} ({track.codec_id}) has no codec private data")
        if track.codec_id != "A_AAC" and (track.codec_private or b"")[:1] != b"\x01":
            raise ApiError(INVALID_CODEC_PRIVATE_DATA,
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

