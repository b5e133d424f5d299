"""Which fragments a streaming session lists: by time range, live, or paced replay.

Fragments are selected by overlap: a fragment belongs to [start, end] when its span
[start, start + duration) meets the range.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from kvslite.archive.fragments import Archive
from kvslite.archive.sessions import Session
from kvslite.media.limits import MAX_FRAGMENT_SPAN_MS
from kvslite.store.metadata import Clock, Fragment

SCAN_WINDOW_MS = 10 * 60_000  # range queries read the index this much at a time
GAP_TOLERANCE_MS = 50  # AWS: a gap or overlap beyond this is a discontinuity


def fragments_in_range(archive: Archive, arn: str, clock: Clock, start_ms: int,
                       end_ms: int | None) -> Iterator[Fragment]:
    """Fragments overlapping [start_ms, end_ms] in time order, read a window at a time.

    Fragments with the same start on the producer clock are one: the newest wins (AWS).
    """
    end_ms = end_ms if end_ms is not None else int(time.time() * 1000) + MAX_FRAGMENT_SPAN_MS
    low = start_ms
    while low <= end_ms:
        high = min(end_ms, low + SCAN_WINDOW_MS)
        batch = archive.overlapping(arn, clock, low, high)
        batch = [f for f in batch if f.start_ms(clock) >= low or low == start_ms]
        if clock is Clock.PRODUCER:
            newest = {f.producer_ms: f for f in sorted(batch, key=lambda f: f.seq)}
            batch = sorted(newest.values(), key=lambda f: (f.producer_ms, f.seq))
        yield from batch
        low = high + 1


def live_window(archive: Archive, session: Session) -> list[Fragment]:
    """The newest fragments of a LIVE session, oldest first, on an increasing timeline."""
    latest = archive.latest(session.stream_arn)
    if latest is None:
        return []
    after = max(session.first_seq - 1, latest.seq - session.max_results)
    window: list[Fragment] = []
    for fragment in archive.fragments(session.stream_arn, after_seq=after,
                                      limit=session.max_results):
        if session.covers(fragment) and (
                not window or session.start(fragment) >= session.start(window[-1])):
            window.append(fragment)  # AWS: never a fragment older than the newest listed
    return window



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

