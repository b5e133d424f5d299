"""Which fragments a streaming session lists: by time range, live, or paced replay.

Fragments are selected by overlap: a fragment belongs to [start, end] when its span
[start, start + duration) meets the range.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from kvslite.server.archive.fragments import Archive
from kvslite.server.archive.sessions import Session
from kvslite.media.limits import MAX_FRAGMENT_SPAN_MS
from kvslite.server.store.metadata import Clock, Fragment

PAGE = 200  # fragments read from the index at a time
GAP_TOLERANCE_MS = 50  # AWS: a gap or overlap beyond this is a discontinuity


def fragments_in_range(archive: Archive, arn: str, clock: Clock, start_ms: int,
                       end_ms: int | None) -> Iterator[Fragment]:
    """Fragments overlapping [start_ms, end_ms] in time order, a page at a time by index
    (the work is bounded by what the caller takes, whatever the range): first those that
    began before start_ms but still cover it, then those starting in the range.

    Fragments with the same start on the producer clock are one: the newest wins (AWS).
    """
    end_ms = end_ms if end_ms is not None else int(time.time() * 1000) + MAX_FRAGMENT_SPAN_MS
    yield from covering_start(archive, arn, clock, start_ms)
    after = None
    while True:
        page = archive.starting(arn, clock, start_ms, end_ms, after=after, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = (page[-1].start_ms(clock), page[-1].seq)


def covering_start(archive: Archive, arn: str, clock: Clock, start_ms: int) -> list[Fragment]:
    """Fragments that began before start_ms and are still playing at it, in time order."""
    before = [f for f in archive.overlapping(arn, clock, start_ms, start_ms)
              if f.start_ms(clock) < start_ms]
    if clock is Clock.PRODUCER:
        newest = {f.producer_ms: f for f in sorted(before, key=lambda f: f.seq)}
        before = list(newest.values())
    return sorted(before, key=lambda f: (f.start_ms(clock), f.seq))


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
    if session.mode == "LIVE_REPLAY":
        return _replay_window(archive, session, now_ms)
    listed = []  # ON_DEMAND: the first MaxManifestFragmentResults of the range
    for fragment in fragments_in_range(archive, session.stream_arn, session.clock,
                                       _range_start(session), session.end_ms):
        if session.covers(fragment):
            listed.append(fragment)
        if len(listed) == session.max_results:
            break
    return Window(listed, 0, 0, True)


def _replay_window(archive: Archive, session: Session, now_ms: int) -> Window:
    """LIVE_REPLAY: the first page at once, then one fragment per fragment duration.

    Only the page that is listed is read; where it sits in the session (media sequence,
    discontinuities before it) is counted by the index, so a poll costs the same after a
    day of replay as after a minute."""
    arn, clock, size = session.stream_arn, session.clock, session.max_results
    start = _range_start(session)
    pre = [f for f in covering_start(archive, arn, clock, start)
           if session.covers(f)]
    first_page = pre + archive.starting(arn, clock, start, _range_end(session),
                                        limit=size)
    if not first_page:
        return Window([], 0, 0, False)
    paced_to = session.start(first_page[min(len(first_page), size) - 1]) + \
        (now_ms - session.created_ms)  # one more fragment each time one would have played
    high = min(paced_to, _range_end(session))
    in_range = archive.count_starting(arn, clock, start, high)
    newest = archive.starting(arn, clock, start, high, descending=True, limit=size)
    shown = (pre + newest[::-1])[-size:]
    first = len(pre) + in_range - len(shown)
    complete = session.end_ms is not None and now_ms > session.end_ms and not (
        high < session.end_ms and archive.starting(arn, clock, high + 1, session.end_ms,
                                                   limit=1))
    return Window(shown, first, _discontinuities_before(archive, session, pre, shown, first),
                  complete)


def _range_start(session: Session) -> int:
    """Where a LIVE_REPLAY or ON_DEMAND session's range starts (LIVE ones have none)."""
    if session.start_ms is None:
        raise ValueError(f"a {session.mode} session without a StartTimestamp")
    return session.start_ms


def _range_end(session: Session) -> int:
    return session.end_ms if session.end_ms is not None else \
        int(time.time() * 1000) + MAX_FRAGMENT_SPAN_MS


def _discontinuities_before(archive: Archive, session: Session, pre: list[Fragment],
                            shown: list[Fragment], first: int) -> int:
    """Discontinuity markers between the session's first fragment and shown[0] (which,
    when first > 0, starts inside the range: the early fragments all come before it)."""
    if first == 0:
        return 0
    if session.discontinuity == "ALWAYS":
        return first  # every boundary is one
    start = _range_start(session)
    count = sum(discontinuity(session, a, b) for a, b in zip(pre, pre[1:]))
    if pre:  # the boundary from the last early fragment to the first in the range
        first_in_range = archive.starting(session.stream_arn, session.clock,
                                          start, session.start(shown[0]), limit=1)
        count += discontinuity(session, pre[-1], first_in_range[0])
    gap = GAP_TOLERANCE_MS if session.discontinuity == "ON_DISCONTINUITY" else None
    return count + archive.count_discontinuities(session.stream_arn, session.clock,
                                                 start, session.start(shown[0]),
                                                 gap)


def discontinuity(session: Session, previous: Fragment, fragment: Fragment) -> bool:
    if previous.header_id != fragment.header_id or session.discontinuity == "ALWAYS":
        return True
    if session.discontinuity == "NEVER":
        return False
    gap = session.start(fragment) - (session.start(previous) + previous.duration_ms)
    return abs(gap) > GAP_TOLERANCE_MS

