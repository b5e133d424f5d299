"""Streaming sessions (HLS, DASH): everything a session is, carried in its token.

A session lives entirely in its token: the stream, the parameters and a timeline
origin, HMAC-signed with a server secret so it can be neither forged nor altered,
and expiring. Every session puts media on one timeline: milliseconds since `origin`
on the session's clock (producer or server), so segments built separately line up.
The origin is where the session's first fragment is first decoded, so its media starts
at (about) zero, where the playlist starts: players that take an fMP4 segment's decode
time as the time to play it (GStreamer's hlsdemux) play at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, replace

from kvslite.server.api_errors import MISSING_PARAMETER, NOT_AUTHORIZED, ApiError
from kvslite.server.archive.fragments import decode_lead_ms
from kvslite.media.limits import MAX_FRAGMENT_SPAN_MS
from kvslite.server.store.metadata import Clock, Fragment

MAX_REORDER_MS = MAX_FRAGMENT_SPAN_MS // 2  # frames may be decoded this long before shown
LIVE_RECENT_MS = 30_000  # LIVE sessions need a fragment this recent
_MAC_BYTES = 16
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]{1,4096}")


@dataclass(frozen=True)
class Session:
    """Everything a session token carries (field order is the token format)."""

    protocol: str  # "HLS" | "DASH"
    stream_arn: str
    mode: str  # "LIVE" | "LIVE_REPLAY" | "ON_DEMAND"
    clock: Clock
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
        return fragment.start_ms(self.clock)

    def covers(self, fragment: Fragment) -> bool:
        """Whether the session may serve this fragment of its stream."""
        start = self.start(fragment)
        after_zero = start - self.origin_ms
        if after_zero < MAX_REORDER_MS and after_zero < decode_lead_ms(fragment):
            return False  # would be decoded before the timeline's zero
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
        values = [v.value if isinstance(v, Clock) else v for v in astuple(session)]
        payload = json.dumps(values, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode().rstrip("=")

    def check(self, token: str | None, protocol: str) -> Session:
        if not token:
            raise ApiError(MISSING_PARAMETER, "SessionToken is required", status=400)
        raw = _decode_token(token)
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise _unauthorized("The session token is not valid")
        session = Session(*json.loads(payload))
        session = replace(session, clock=Clock(session.clock))
        if session.protocol != protocol:
            raise _unauthorized(f"The session token is not valid for {protocol}")
        if self.now_ms() >= session.expires_ms:
            raise _unauthorized("The session token has expired")
        return session

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _decode_token(token: str) -> bytes:
    """The token's bytes, only if `token` is exactly their canonical unpadded base64url:
    anything appended, padded or re-spelled is a different token, refused."""
    if not _TOKEN_CHARS.fullmatch(token):
        return b""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return b""
    canonical = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return raw if canonical == token else b""


def _unauthorized(message: str) -> ApiError:
    # AWS documents "Status Code: 403" for this error; its model says 401
    return ApiError(NOT_AUTHORIZED, message, status=403)



def overlaps(fragment: Fragment, start: int, range_start: int | None,
             range_end: int | None) -> bool:
    """Whether the fragment's span [start, start + duration) meets [range_start, range_end]."""
    after_start = range_start is None or start + fragment.duration_ms > range_start
    return after_start and (range_end is None or start <= range_end)

