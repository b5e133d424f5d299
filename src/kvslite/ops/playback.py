"""Playback operations of `kinesis-video-archived-media`: GetClip, and the HLS and DASH
streaming sessions with the pages their URLs lead to.

GetClip remuxes whole fragments into one MP4 in a temporary file (the mp4 muxer
seeks) and streams it. GetHLSStreamingSessionURL / GetDASHStreamingSessionURL return
a URL on this server whose SessionToken carries the whole session; the pages under
/hls/v1/ and /dash/v1/ (not SigV4-signed, the token is the credential, as on AWS)
build playlists, manifests and segments from the archive on demand.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import av
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from kvslite.archive import playback as pb
from kvslite.archive.fragments import Archive, unpack_frames
from kvslite.archive.streams import Streams
from kvslite.errors import ApiError, invalid, not_found
from kvslite.media import remux
from kvslite.ops.archived import TIME_COLUMNS
from kvslite.store.metadata import Fragment, Stream

MAX_CLIP_BYTES = 200 * 1024 * 1024
MAX_CLIP_MS = 90 * 60_000
MAX_RANGE_MS = 24 * 3600_000  # AWS: EndTimestamp within 24 hours of StartTimestamp
MAX_CLIPS_IN_FLIGHT = 4
CHUNK = 1 << 20
DEFAULT_EXPIRES_S = 300
DEFAULT_MAX_RESULTS = {"LIVE": 5, "LIVE_REPLAY": 5, "ON_DEMAND": 1000}
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4",
                 ".ts": "video/MP2T", ".mpd": "application/dash+xml"}


class Playback:
    def __init__(self, streams: Streams, archive: Archive, *, endpoint_url: str,
                 clock: Callable[[], float] | None = None):
        self.streams = streams
        self.archive = archive
        self.endpoint_url = endpoint_url.rstrip("/")
        key = archive.store.secret("playback-session")
        self.tokens = pb.SessionTokens(key, clock) if clock else pb.SessionTokens(key)
        self.clip_slots = threading.BoundedSemaphore(MAX_CLIPS_IN_FLIGHT)
        self._init_segment = lru_cache(maxsize=64)(self._build_init)  # thread-safe

    def _stream(self, params: dict) -> Stream:
        return _retained(self.streams.resolve(params.get("StreamName"), params.get("StreamARN")))

    # -- GetClip ----------------------------------------------------------------------

    def get_clip(self, params: dict) -> StreamingResponse:
        stream = self._stream(params)
        selector = params["ClipFragmentSelector"]
        clock = TIME_COLUMNS[selector["FragmentSelectorType"]]
        start, end = self._range(clock, selector["TimestampRange"], end_required=True)
        placed = self._clip_fragments(stream, clock, start, end)
        if not self.clip_slots.acquire(blocking=False):
            raise ApiError("ClientLimitExceededException",
                           "Too many GetClip requests in flight; retry shortly")
        try:
            clip = self._write_clip(placed)
        finally:
            self.clip_slots.release()
        size = os.fstat(clip.fileno()).st_size
        return StreamingResponse(_chunks(clip), media_type="video/mp4",
                                 headers={"Content-Length": str(size)})

    def _clip_fragments(self, stream: Stream, clock: str, start: int, end: int
                        ) -> list[tuple[Fragment, int]]:
        """(fragment, where it starts in the clip), within the size and length limits."""
        placed, size = [], 0
        in_range = pb.fragments_in_range(self.archive, stream.arn, clock, start, end)
        for fragment, at in _placed(in_range, clock):
            placed.append((fragment, at))
            size += fragment.size
            if size > MAX_CLIP_BYTES or at + fragment.duration_ms - placed[0][1] > MAX_CLIP_MS:
                raise invalid(f"The clip exceeds the limit of {MAX_CLIP_BYTES >> 20} MB or "
                              f"{MAX_CLIP_MS // 60_000} minutes of media; request a shorter "
                              f"time range")
        if not placed:
            raise not_found("No fragments found in the specified time range")
        self._check_same_tracks([fragment for fragment, _ in placed])
        return placed

    def _check_same_tracks(self, fragments: list[Fragment]) -> None:
        headers = {f.header_id for f in fragments}
        pb.check_playable(self.archive, fragments[0])
        if len({self.archive.header(h) for h in headers}) > 1:
            raise ApiError("InvalidCodecPrivateDataException",
                           "The codec private data or tracks change within the requested "
                           "clip; request a range with one track configuration")

    def _write_clip(self, placed: list[tuple[Fragment, int]]):
        """The clip in an unlinked temporary file, opened for reading."""
        origin = placed[0][1]
        delay = pb.clip_delay([fragment for fragment, _ in placed])
        samples = (sample for fragment, at in placed
                   for sample in pb.fragment_samples(self.archive, fragment, at, origin, delay))
        fd, path = tempfile.mkstemp(prefix="kvslite-clip-", suffix=".mp4")
        os.close(fd)
        try:
            with _media_errors():
                remux.write_mp4(path, self.archive.header(placed[0][0].header_id), samples)
            return open(path, "rb")
        finally:
            os.unlink(path)  # the open file keeps the data until it is closed

    def _range(self, clock: str, timestamps: dict, *, end_required: bool
               ) -> tuple[int, int | None]:
        if timestamps.get("StartTimestamp") is None:
            raise invalid("TimestampRange.StartTimestamp is required")
        start = round(timestamps["StartTimestamp"] * 1000)
        end = timestamps.get("EndTimestamp")
        if end is None:
            if end_required:
                raise invalid("TimestampRange.EndTimestamp is required")
            return start, None
        end = round(end * 1000)
        if end <= start:
            raise invalid("EndTimestamp must be later than StartTimestamp")
        if end - start > MAX_RANGE_MS:
            raise invalid("EndTimestamp must be within 24 hours of StartTimestamp")
        if clock == "server_ms" and end > self.tokens.now_ms():
            raise invalid("With SERVER_TIMESTAMP, EndTimestamp must be in the past")
        return start, end

    # -- streaming sessions -------------------------------------------------------------

    def get_hls_streaming_session_url(self, params: dict) -> dict:
        session = self._new_session("HLS", params, params.get("HLSFragmentSelector"),
                                    params.get("MaxMediaPlaylistFragmentResults"))
        token = self.tokens.issue(session)
        return {"HLSStreamingSessionURL":
                f"{self.endpoint_url}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={token}"}

    def get_dash_streaming_session_url(self, params: dict) -> dict:
        session = self._new_session("DASH", params, params.get("DASHFragmentSelector"),
                                    params.get("MaxManifestFragmentResults"))
        token = self.tokens.issue(session)
        return {"DASHStreamingSessionURL":
                f"{self.endpoint_url}/dash/v1/getDASHManifest.mpd?SessionToken={token}"}

    def _new_session(self, protocol: str, params: dict, selector: dict | None,
                     max_results: int | None) -> pb.Session:
        stream = self._stream(params)
        mode = params.get("PlaybackMode", "LIVE")
        selector = selector or {}
        clock = TIME_COLUMNS[selector.get("FragmentSelectorType", "SERVER_TIMESTAMP")]
        timestamps = selector.get("TimestampRange")
        start = end = None
        if mode == "LIVE" and timestamps:
            raise invalid("TimestampRange must not be set when PlaybackMode is LIVE")
        if mode != "LIVE":
            if not selector.get("FragmentSelectorType") or not timestamps:
                raise invalid(f"PlaybackMode {mode} needs FragmentSelectorType and "
                              f"TimestampRange")
            start, end = self._range(clock, timestamps, end_required=mode == "ON_DEMAND")
        first_seq, origin, first = self._session_start(stream, mode, clock, start, end,
                                                       max_results or DEFAULT_MAX_RESULTS[mode])
        pb.check_playable(self.archive, first)
        if protocol == "DASH":
            discontinuity = "ON_DISCONTINUITY"  # DASH: a new Period at each gap
        else:
            discontinuity = params.get("DiscontinuityMode") or (
                "ALWAYS" if clock == "server_ms" else "NEVER")
        return self.tokens.new(
            params.get("Expires", DEFAULT_EXPIRES_S), protocol=protocol,
            stream_arn=stream.arn, mode=mode, clock=clock, start_ms=start, end_ms=end,
            container=params.get("ContainerFormat", "FRAGMENTED_MP4"),
            discontinuity=discontinuity,
            show_timestamps=params.get("DisplayFragmentTimestamp") == "ALWAYS",
            show_numbers=params.get("DisplayFragmentNumber") == "ALWAYS",
            max_results=max_results or DEFAULT_MAX_RESULTS[mode], origin_ms=origin,
            first_seq=first_seq)

    def _session_start(self, stream: Stream, mode: str, clock: str, start, end,
                       max_results: int) -> tuple[int, int, Fragment]:
        """(first seq, timeline origin, first fragment) of a new session."""
        if mode == "LIVE":
            latest = self.archive.store.latest_fragment(stream.arn)
            if latest is None or latest.server_ms < self.tokens.now_ms() - pb.LIVE_RECENT_MS:
                raise not_found(f"Stream {stream.name} has no fragments from the last "
                                f"{pb.LIVE_RECENT_MS // 1000} seconds")
            first_seq = max(1, latest.seq - max_results + 1)
            window = self.archive.store.list_fragments(stream.arn, after_seq=first_seq - 1,
                                                       limit=max_results)
            origin = min(getattr(f, clock) for f in window) - pb.ORIGIN_LEAD_MS
            return first_seq, origin, latest
        first = next(pb.fragments_in_range(self.archive, stream.arn, clock, start, end), None)
        if first is None:
            raise not_found("No fragments found in the specified time range")
        return 0, start - pb.ORIGIN_LEAD_MS, first

    # -- pages ----------------------------------------------------------------------------

    async def hls_page(self, request: Request) -> Response:
        return await self._page(request, "/hls/v1/", "HLS", {
            "getHLSMasterPlaylist.m3u8": self._master_playlist,
            "getHLSMediaPlaylist.m3u8": self._media_playlist,
            "getMP4InitFragment.mp4": self._init_fragment,
            "getMP4MediaFragment.mp4": self._media_fragment,
            "getTSFragment.ts": self._media_fragment,
        })

    async def dash_page(self, request: Request) -> Response:
        return await self._page(request, "/dash/v1/", "DASH", {
            "getDASHManifest.mpd": self._manifest,
            "getMP4InitFragment.mp4": self._init_fragment,
            "getMP4MediaFragment.mp4": self._media_fragment,
        })

    async def _page(self, request: Request, prefix: str, protocol: str, handlers) -> Response:
        path = request.url.path
        name = path[len(prefix):] if path.startswith(prefix) else ""
        handler = handlers.get(name)
        if handler is None:
            raise ApiError("ResourceNotFoundException", f"No {protocol} resource at {path}",
                           status=404)
        if request.method not in ("GET", "HEAD"):
            raise ApiError("MethodNotAllowedException", f"{path} accepts GET only",
                           status=405)
        query = dict(request.query_params)
        session = self.tokens.check(query.get("SessionToken"), protocol)
        body = await run_in_threadpool(handler, session, query, name)
        media_type = CONTENT_TYPES[name[name.rindex("."):]]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    def _window(self, session: pb.Session) -> pb.Window:
        _retained(self.streams.resolve(arn=session.stream_arn))
        return pb.session_window(self.archive, session, self.tokens.now_ms())

    def _master_playlist(self, session: pb.Session, query: dict, name: str) -> str:
        window = self._window(session)
        first = self._fragment(session, query.get("FragmentNumber"), window)
        return pb.hls_master(query["SessionToken"],
                             self.archive.header(first.header_id), window)

    def _media_playlist(self, session: pb.Session, query: dict, name: str) -> str:
        return pb.hls_media(session, query["SessionToken"], self._window(session))

    def _manifest(self, session: pb.Session, query: dict, name: str) -> str:
        window = self._window(session)
        first = self._fragment(session, None, window)
        return pb.dash_manifest(session, query["SessionToken"],
                                self.archive.header(first.header_id), window,
                                self.tokens.now_ms())

    def _init_fragment(self, session: pb.Session, query: dict, name: str) -> bytes:
        if session.container != "FRAGMENTED_MP4":
            raise invalid("This session's ContainerFormat is MPEG_TS: use getTSFragment.ts")
        window = None if query.get("FragmentNumber") else self._window(session)
        header_id = self._fragment(session, query.get("FragmentNumber"), window).header_id
        return self._init_segment(header_id)

    def _build_init(self, header_id: int) -> bytes:
        return remux.init_segment(self.archive.header(header_id))

    def _media_fragment(self, session: pb.Session, query: dict, name: str) -> bytes:
        kind = "ts" if name.endswith(".ts") else "mp4"
        if (kind == "ts") != (session.container == "MPEG_TS"):
            raise invalid(f"{name} does not serve this session's ContainerFormat "
                          f"{session.container}")
        if query.get("FragmentTime", "").isdigit():  # DASH: $Time$ on the session timeline
            fragment = self._fragment_at(session, int(query["FragmentTime"]))
        elif query.get("FragmentNumber"):
            fragment = self._fragment(session, query["FragmentNumber"], None)
        else:
            raise ApiError("MissingParameter", "FragmentNumber is required", status=400)
        with _media_errors():
            return pb.segment(self.archive, session, fragment, kind)

    def _fragment_at(self, session: pb.Session, time_ms: int) -> Fragment:
        stream = _retained(self.streams.resolve(arn=session.stream_arn))
        start = session.origin_ms + time_ms
        found = self.archive.store.fragment_at(stream.arn, session.clock, start)
        if found is None or session.start(found) != start or not session.covers(found):
            raise not_found(f"No fragment of this session starts at {time_ms}")
        return found

    def _fragment(self, session: pb.Session, number: str | None,
                  window: pb.Window | None) -> Fragment:
        """The fragment named by FragmentNumber (it must be in the session), else the
        first one the session lists now."""
        stream = _retained(self.streams.resolve(arn=session.stream_arn))
        if number is None:
            window = window or self._window(session)
            if not window.fragments:
                raise not_found("The session has no fragments to play yet")
            return window.fragments[0]
        found = self.archive.store.fragments_by_number(stream.arn, [number]).get(number)
        if found is None or not session.covers(found):
            raise not_found(f"Fragment {number} is not part of this streaming session")
        return found


def _retained(stream: Stream) -> Stream:
    if stream.data_retention_hours == 0:
        raise ApiError("NoDataRetentionException",
                       f"Stream {stream.name} has no data retention, so no archive")
    return stream


def _placed(fragments: Iterable[Fragment], clock: str) -> Iterator[tuple[Fragment, int]]:
    """Each fragment with where it starts in a clip: at its time on the clock, unless its
    first frame would not come after the previous fragment's last frame (fragments
    uploaded faster than real time overlap on the server clock): then right after the
    previous one ends. Gaps stay, and so does a jitter of less than a frame."""
    end = last_frame = None
    for fragment in fragments:
        start = getattr(fragment, clock)
        if last_frame is not None and start <= last_frame:
            start = end
        end = start + fragment.duration_ms
        last_frame = start + max((e.offset_ms for e in unpack_frames(fragment.frames)), default=0)
        yield fragment, start


@contextmanager
def _media_errors():
    """FFmpeg refusing the stored frames is the media's fault, not the server's."""
    try:
        yield
    except (av.FFmpegError, ValueError) as e:
        raise ApiError("InvalidMediaFrameException",
                       f"The stored media could not be remuxed: {e}") from e


def _chunks(file) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK):
            yield chunk
