"""HLS and DASH streaming sessions (`kinesis-video-archived-media`) and their pages.

GetHLSStreamingSessionURL / GetDASHStreamingSessionURL return a URL on this server whose
SessionToken carries the whole session; the pages under /hls/v1/ and /dash/v1/ (not
SigV4-signed: the token is the credential, as on AWS) build playlists, manifests and
segments from the archive on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from kvslite.server.archive import Clock, Fragment, Stream
from kvslite.server.archive.control_plane import ControlPlane, require_archive
from kvslite.server.archive.segments import check_playable, segment
from kvslite.server.archive.selection import Window, fragments_in_range, session_window
from kvslite.server.archive.fragments import Archive, decode_lead_ms
from kvslite.server.archive.sessions import LIVE_RECENT_MS, Session, SessionTokens
from kvslite.server.api_errors import MISSING_PARAMETER, RESOURCE_NOT_FOUND, ApiError, invalid, not_found
from kvslite.media import remux
from kvslite.server.ops import manifests
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.ops.clips import media_errors, time_range

DEFAULT_EXPIRES_S = 300
DEFAULT_MAX_RESULTS = {"LIVE": 5, "LIVE_REPLAY": 5, "ON_DEMAND": 1000}
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4",
                 ".ts": "video/MP2T", ".mpd": "application/dash+xml"}

# A LIVE DASH segment asked for just past the newest fragment is held until that fragment
# is stored, at most this long (players such as FFmpeg's ask for the next segment before it
# exists, and on a 404 re-read the MPD and ask again at once, in a loop)
LIVE_EDGE_HOLD_S = 3.0
LIVE_EDGE_RECHECK_S = 1.0  # re-read the index this often even without a wake-up
# how far from where the next segment is expected a LIVE request may be and still be for it:
# server timestamps are arrival times, so a fragment starts a few ms off its predecessor's end
LIVE_EDGE_SLACK_MS = 250

# A page builds its body from the session and the query parameters.
PageBuilder = Callable[[Session, dict, str], "str | bytes"]


class StreamingSessions:
    def __init__(self, control: ControlPlane, archive: Archive, *, endpoint_url: str,
                 tokens: SessionTokens):
        self.control = control
        self.archive = archive
        self.endpoint_url = endpoint_url.rstrip("/")
        self.tokens = tokens
        self._init_segment = lru_cache(maxsize=64)(self._build_init)  # thread-safe

    def operations(self) -> dict:
        return {"GetHLSStreamingSessionURL": self.get_hls_streaming_session_url,
                "GetDASHStreamingSessionURL": self.get_dash_streaming_session_url}

    # -- the session URLs -----------------------------------------------------------------

    def get_hls_streaming_session_url(self, request: rq.GetHLSStreamingSessionURLInput
                                      ) -> rs.GetHLSStreamingSessionURLOutput:
        session = self._new_session("HLS", request, request.hls_fragment_selector,
                                    request.max_media_playlist_fragment_results,
                                    request.discontinuity_mode, request.container_format)
        token = self.tokens.issue(session)
        return {"HLSStreamingSessionURL":
                f"{self.endpoint_url}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={token}"}

    def get_dash_streaming_session_url(self, request: rq.GetDASHStreamingSessionURLInput
                                       ) -> rs.GetDASHStreamingSessionURLOutput:
        # DASH starts a new Period at each gap instead of marking a discontinuity
        session = self._new_session("DASH", request, request.dash_fragment_selector,
                                    request.max_manifest_fragment_results,
                                    "ON_DISCONTINUITY", "FRAGMENTED_MP4",
                                    show_numbers=request.display_fragment_number == "ALWAYS")
        token = self.tokens.issue(session)
        return {"DASHStreamingSessionURL":
                f"{self.endpoint_url}/dash/v1/getDASHManifest.mpd?SessionToken={token}"}

    def _new_session(self, protocol: str, request, selector, max_results: int | None,
                     discontinuity: str | None, container: str | None, *,
                     show_numbers: bool = False) -> Session:
        """A session for an HLS or DASH request (their members share names)."""
        stream = require_archive(self.control.resolve(request.stream_name, request.stream_arn))
        mode = request.playback_mode or "LIVE"
        selector_type = selector.fragment_selector_type if selector else None
        clock = Clock(selector_type or "SERVER_TIMESTAMP")
        timestamps = selector.timestamp_range if selector else None
        start = end = None
        if mode == "LIVE" and timestamps:
            raise invalid("TimestampRange must not be set when PlaybackMode is LIVE")
        if mode != "LIVE":
            if not selector_type or not timestamps:
                raise invalid(f"PlaybackMode {mode} needs FragmentSelectorType and "
                              f"TimestampRange")
            start, end = time_range(clock, timestamps, self.tokens.now_ms(),
                                    end_required=mode == "ON_DEMAND")
        max_results = max_results or DEFAULT_MAX_RESULTS[mode]
        first_seq, origin, first = self._session_start(stream, mode, clock, start, end,
                                                       max_results)
        check_playable(self.archive, first)
        return self.tokens.new(
            request.expires or DEFAULT_EXPIRES_S, protocol=protocol,
            stream_arn=stream.arn, mode=mode, clock=clock, start_ms=start, end_ms=end,
            container=container or "FRAGMENTED_MP4",
            discontinuity=discontinuity or ("ALWAYS" if clock is Clock.SERVER else "NEVER"),
            show_timestamps=request.display_fragment_timestamp == "ALWAYS",
            show_numbers=show_numbers,
            max_results=max_results, origin_ms=origin, first_seq=first_seq)

    def _session_start(self, stream: Stream, mode: str, clock: Clock, start, end,
                       max_results: int) -> tuple[int, int, Fragment]:
        """(first seq, timeline origin, first fragment) of a new session."""
        if mode == "LIVE":
            latest = self.archive.latest(stream.arn)
            if latest is None or latest.server_ms < self.tokens.now_ms() - LIVE_RECENT_MS:
                raise not_found(f"Stream {stream.name} has no fragments from the last "
                                f"{LIVE_RECENT_MS // 1000} seconds")
            first_seq = max(1, latest.seq - max_results + 1)
            window = self.archive.fragments(stream.arn, after_seq=first_seq - 1,
                                            limit=max_results)
            origin = min(_decoded_from(f, clock) for f in window)
            return first_seq, origin, latest
        first = next(fragments_in_range(self.archive, stream.arn, clock, start, end), None)
        if first is None:
            raise not_found("No fragments found in the specified time range")
        return 0, _decoded_from(first, clock), first  # the range's earliest fragment

    # -- the pages ------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The session pages, at the paths AWS uses."""
        hls: dict[str, PageBuilder] = {
            "getHLSMasterPlaylist.m3u8": self._master_playlist,
            "getHLSMediaPlaylist.m3u8": self._media_playlist,
            "getMP4InitFragment.mp4": self._init_fragment,
            "getMP4MediaFragment.mp4": self._media_fragment,
            "getTSFragment.ts": self._media_fragment}
        dash: dict[str, PageBuilder] = {
            "getDASHManifest.mpd": self._manifest,
            "getMP4InitFragment.mp4": self._init_fragment,
            "getMP4MediaFragment.mp4": self._media_fragment}
        return [Mount("/hls/v1", routes=self._pages("HLS", hls)),
                Mount("/dash/v1", routes=self._pages("DASH", dash))]

    def _pages(self, protocol: str, builders: dict[str, PageBuilder]) -> list[Route]:
        routes = [Route(f"/{name}", self._page(protocol, name, build), methods=["GET", "HEAD"])
                  for name, build in builders.items()]

        async def unknown(request: Request) -> Response:
            raise ApiError(RESOURCE_NOT_FOUND,
                           f"No {protocol} resource at {request.url.path}", status=404)

        return routes + [Route("/{name:path}", unknown)]

    def _page(self, protocol: str, name: str, build: PageBuilder):
        media_type = CONTENT_TYPES[name[name.rindex("."):]]

        async def page(request: Request) -> Response:
            query = dict(request.query_params)
            session = self.tokens.check(query.get("SessionToken"), protocol)
            body = await self._build_when_stored(build, session, query, name)
            return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

        return page

    async def _build_when_stored(self, build: PageBuilder, session: Session, query: dict,
                                 name: str) -> str | bytes:
        """The page, built once the fragment it is for is stored if that is the next one
        of a LIVE session (woken by the archive when one is committed); else its 404."""
        deadline = time.monotonic() + LIVE_EDGE_HOLD_S
        while True:
            try:
                return await run_in_threadpool(build, session, query, name)
            except NotStoredYet as pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                await self.archive.wait_for_new_fragments(
                    session.stream_arn, pending.seen, min(left, LIVE_EDGE_RECHECK_S))

    def _window(self, session: Session) -> Window:
        require_archive(self.control.resolve(arn=session.stream_arn))
        return session_window(self.archive, session, self.tokens.now_ms())

    def _master_playlist(self, session: Session, query: dict, name: str) -> str:
        window = self._window(session)
        first = self._fragment(session, query.get("FragmentNumber"), window)
        # the token is re-issued from the checked session, never echoed from the request
        return manifests.hls_master(self.tokens.issue(session),
                                    self.archive.tracks(first.header_id), window)

    def _media_playlist(self, session: Session, query: dict, name: str) -> str:
        return manifests.hls_media(session, self.tokens.issue(session), self._window(session))

    def _manifest(self, session: Session, query: dict, name: str) -> str:
        window = self._window(session)
        first = self._fragment(session, None, window)
        return manifests.dash_manifest(session, self.tokens.issue(session),
                                       self.archive.tracks(first.header_id), window,
                                       self.tokens.now_ms(), self._origin_on_wall_clock(session))

    def _origin_on_wall_clock(self, session: Session) -> int:
        """When the session's timeline zero is on the server's clock, the same for every
        refresh (a live MPD's availabilityStartTime): producer times are moved by how far
        the producer's clock was from the server's at the session's first fragment."""
        if session.clock is Clock.SERVER or session.mode != "LIVE":
            return session.origin_ms
        first = self.archive.fragments(session.stream_arn, after_seq=session.first_seq - 1,
                                       limit=1)
        skew = first[0].server_ms - first[0].producer_ms if first else 0
        return session.origin_ms + skew

    def _init_fragment(self, session: Session, query: dict, name: str) -> bytes:
        if session.container != "FRAGMENTED_MP4":
            raise invalid("This session's ContainerFormat is MPEG_TS: use getTSFragment.ts")
        window = None if query.get("FragmentNumber") else self._window(session)
        header_id = self._fragment(session, query.get("FragmentNumber"), window).header_id
        return self._init_segment(header_id)

    def _build_init(self, header_id: int) -> bytes:
        return remux.init_segment(self.archive.header(header_id))

    def _media_fragment(self, session: Session, query: dict, name: str) -> bytes:
        kind = "ts" if name.endswith(".ts") else "mp4"
        if (kind == "ts") != (session.container == "MPEG_TS"):
            raise invalid(f"{name} does not serve this session's ContainerFormat "
                          f"{session.container}")
        if query.get("FragmentTime", "").isdigit():  # DASH: $Time$ on the session timeline
            fragment = self._fragment_at(session, int(query["FragmentTime"]))
        elif query.get("FragmentNumber"):
            fragment = self._fragment(session, query["FragmentNumber"], None)
        else:
            raise ApiError(MISSING_PARAMETER, "FragmentNumber is required", status=400)
        with media_errors():
            return segment(self.archive, session, fragment, kind)

    def _fragment_at(self, session: Session, time_ms: int) -> Fragment:
        stream = require_archive(self.control.resolve(arn=session.stream_arn))
        start = session.origin_ms + time_ms
        seen = self.archive.new_fragments_seen(stream.arn)  # before reading the index
        found = self.archive.at(stream.arn, session.clock, start)
        if found is not None and session.start(found) != start:
            found = self._live_segment_near(session, start) if session.mode == "LIVE" else None
        if found is None or not session.covers(found):
            missing = f"No fragment of this session starts at {time_ms}"
            if session.mode == "LIVE" and self._is_next_live_segment(session, start):
                raise NotStoredYet(missing, seen)
            raise not_found(missing)
        return found

    def _live_segment_near(self, session: Session, start: int) -> Fragment | None:
        """The LIVE segment starting within LIVE_EDGE_SLACK_MS of `start`: the next segment
        a player asks for at where the newest listed one ends, stored a few ms off that."""
        near = self.archive.starting(session.stream_arn, session.clock,
                                     start - LIVE_EDGE_SLACK_MS, start + LIVE_EDGE_SLACK_MS,
                                     limit=2)
        return min(near, key=lambda f: abs(session.start(f) - start), default=None)

    def _is_next_live_segment(self, session: Session, start: int) -> bool:
        """Whether `start` is where the stream's newest fragment ends: the segment a player
        asks for next, which exists once the producer's next fragment is stored."""
        latest = self.archive.latest(session.stream_arn)
        if latest is None or not session.covers(latest):
            return False
        return abs(session.start(latest) + latest.duration_ms - start) <= LIVE_EDGE_SLACK_MS

    def _fragment(self, session: Session, number: str | None,
                  window: Window | None) -> Fragment:
        """The fragment named by FragmentNumber (it must be in the session), else the
        first one the session lists now."""
        stream = require_archive(self.control.resolve(arn=session.stream_arn))
        if number is None:
            window = window or self._window(session)
            if not window.fragments:
                raise not_found("The session has no fragments to play yet")
            return window.fragments[0]
        found = self.archive.by_number(stream.arn, number)
        if found is None or not session.covers(found):
            raise not_found(f"Fragment {number} is not part of this streaming session")
        return found


class NotStoredYet(ApiError):
    """A 404 for the next segment of a LIVE session, which the page waits for a while
    (from the `seen` mark of new fragments) before answering it."""

    def __init__(self, message: str, seen: int):
        super().__init__(RESOURCE_NOT_FOUND, message)
        self.seen = seen


def _decoded_from(fragment: Fragment, clock: Clock) -> int:
    """When the fragment's first frame is decoded: a session's timeline zero, when the
    fragment is the session's first, so its media starts at zero, where its playlist does."""
    return fragment.start_ms(clock) - decode_lead_ms(fragment)
