"""CORS: which pages on other origins may read kvslite's answers.

Two kinds of resources, two rules:

- HLS playlists, DASH manifests and their segments (/hls/, /dash/): any origin, as AWS
  serves them. The SessionToken in the URL is the credential; a page that has the URL may
  play it, and browser players (hls.js, dash.js, Video.js) need CORS to do so.
- Everything else (the SigV4-signed APIs, PutMedia, GetMedia, the viewer): only the origins
  of --cors-allow-origins, none by default, so that a page a user happens to open cannot
  drive a server that trusts its network (an anonymous one) from the user's browser.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin
is answered here with the methods and the very headers it asks for; from any other origin
it is refused with 403 and no CORS headers, so the browser blocks the request.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kvslite.server.api_errors import ACCESS_DENIED, ApiError

MEDIA_PREFIXES = ("/hls/", "/dash/")
MEDIA_METHODS = b"GET, HEAD"
API_METHODS = b"POST, GET, HEAD"
# what a page may read besides the safelisted headers: request ids and error codes of the
# APIs; for media the sizes and ranges players use, and Date, dash.js's clock of last resort
# for LIVE when the manifest names no UTCTiming source
API_EXPOSED = b"x-amzn-RequestId, x-amzn-ErrorType"
MEDIA_EXPOSED = b"Content-Length, Content-Range, Date, x-amzn-RequestId, x-amzn-ErrorType"
PREFLIGHT_MAX_AGE = b"600"  # seconds a browser may reuse a preflight's answer


def parse_origins(value: str | None) -> frozenset[str]:
    """`--cors-allow-origins`: comma-separated origins (`https://app.example:8443`) or `*`.
    Raises ValueError naming what it cannot read."""
    origins = {item.strip().rstrip("/") for item in (value or "").split(",") if item.strip()}
    for origin in origins - {"*"}:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or \
                parts.path or parts.query or parts.fragment or parts.username:
            raise ValueError(f"--cors-allow-origins: {origin!r} is not an origin like "
                             f"https://app.example or http://localhost:8080 (or *)")
    return frozenset(origins)


class Cors:
    """The CORS step of the edge (edge/middleware.py describes the others)."""

    def __init__(self, app, allowed_origins: frozenset[str], error_response):
        self.app = app
        self.allowed = allowed_origins
        self.error_response = error_response

    async def __call__(self, scope, receive, send) -> None:
        origin = _header(scope, b"origin")
        if origin is None:  # not a cross-origin request from a browser
            await self.app(scope, receive, send)
            return
        allow = self._allow_origin(scope.get("path", ""), origin)
        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await self._preflight(scope, receive, send, allow)
            return

        async def with_cors(message) -> None:
            if message["type"] == "http.response.start" and allow is not None:
                message["headers"] = [*message.get("headers", []),
                                      *_cors_headers(scope, allow)]
            await send(message)

        await self.app(scope, receive, with_cors)

    def _allow_origin(self, path: str, origin: str) -> bytes | None:
        """The Access-Control-Allow-Origin value for this request, None: not allowed."""
        if path.startswith(MEDIA_PREFIXES) or "*" in self.allowed:
            return b"*"
        return origin.encode("latin-1") if origin.rstrip("/") in self.allowed else None

    async def _preflight(self, scope, receive, send, allow: bytes | None) -> None:
        if allow is None:
            error = ApiError(ACCESS_DENIED, "This origin is not in kvslite's "
                             "--cors-allow-origins", status=403)
            await self.error_response(error)(scope, receive, send)
            return
        media = scope.get("path", "").startswith(MEDIA_PREFIXES)
        headers = [*_cors_headers(scope, allow),
                   (b"access-control-allow-methods", MEDIA_METHODS if media else API_METHODS),
                   (b"access-control-max-age", PREFLIGHT_MAX_AGE),
                   (b"content-length", b"0")]
        requested = _header(scope, b"access-control-request-headers")
        if requested:  # whatever the page will send: SigV4's headers, Range, ...
            headers.append((b"access-control-allow-headers", requested.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _cors_headers(scope, allow: bytes) -> list[tuple[bytes, bytes]]:
    media = scope.get("path", "").startswith(MEDIA_PREFIXES)
    headers = [(b"access-control-allow-origin", allow),
               (b"access-control-expose-headers", MEDIA_EXPOSED if media else API_EXPOSED)]
    if allow != b"*":  # the answer depends on the Origin: caches must keep them apart
        headers.append((b"vary", b"Origin"))
    return headers


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
