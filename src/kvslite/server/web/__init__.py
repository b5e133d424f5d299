"""The web viewer: static files served at `/` (the page) and `/web/...` (its assets).

The viewer is plain HTML/CSS/JS under `static/`, talking to the same origin through the
public KVS API, so serving it is Starlette's StaticFiles plus kvslite's headers: a
Content-Security-Policy on the page, `nosniff` everywhere, and a year of caching for
pinned third-party files. `/web/limits.js` hands the viewer the limits it shares with
the server, so each number has one home, and this server's settings the viewer must
respect (the smallest GetImages SamplingInterval), so it never has to guess them.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from kvslite.media import limits

STATIC = Path(__file__).resolve().parent / "static"

# Pinned third-party files carry their version in the name: cache them for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # our own files: always revalidate (cheap, thanks to the ETag)

# The page only ever talks to its own origin; hls.js runs its demuxer in a blob: worker
# and feeds the <video> through MediaSource (blob:); thumbnails are data: URLs.
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
       "worker-src 'self' blob:; connect-src 'self'; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
GZIP_MIN_BYTES = 1024
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


class _Assets(StaticFiles):
    """StaticFiles with kvslite's headers on every file, gzipped for clients that take it."""

    def file_response(self, full_path, stat_result, scope, status_code=200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        path = Path(full_path)
        if response.status_code == 200 and _accepts_gzip(scope) and \
                stat_result.st_size > GZIP_MIN_BYTES:
            body = _gzipped(path, stat_result.st_mtime_ns)
            headers = {k: v for k, v in response.headers.items() if k != "content-length"}
            response = Response(body if scope["method"] != "HEAD" else b"", headers=headers)
            response.headers.update({"content-encoding": "gzip",
                                     "content-length": str(len(body))})
        if path.suffix in CONTENT_TYPES:  # the platform's MIME table varies; these must not
            response.headers["content-type"] = CONTENT_TYPES[path.suffix]
        pinned = path.parent.name == "vendor" and path.suffix == ".js"
        response.headers.update(_security_headers(html=path.suffix == ".html"))
        response.headers["cache-control"] = IMMUTABLE if pinned else REVALIDATE
        return response


def _accepts_gzip(scope) -> bool:
    return any(name == b"accept-encoding" and b"gzip" in value
               for name, value in scope["headers"])


@lru_cache(maxsize=64)
def _gzipped(path: Path, mtime_ns: int) -> bytes:
    """The file compressed once per version (the viewer's files are small)."""
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


def _security_headers(*, html: bool) -> dict[str, str]:
    headers = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
               "vary": "Accept-Encoding"}
    if html:
        headers.update({"content-security-policy": CSP, "x-frame-options": "DENY"})
    return headers


def limits_module(min_sampling_interval_ms: int) -> str:
    """The limits the viewer shares with the server, as an ES module."""
    return (f"// Served by kvslite from kvslite.media.limits and its settings; not a file "
            f"on disk.\n"
            f"export const MAX_FRAGMENT_SPAN_MS = {limits.MAX_FRAGMENT_SPAN_MS};\n"
            f"export const MIN_SAMPLING_INTERVAL_MS = {int(min_sampling_interval_ms)};\n")


class WebViewer:
    def __init__(self, root: Path = STATIC, *, min_sampling_interval_ms: int):
        self.assets = _Assets(directory=root)
        self.min_sampling_interval_ms = min_sampling_interval_ms  # --min-sampling-interval-ms

    def routes(self) -> list[BaseRoute]:
        return [Route("/", self._index, methods=["GET", "HEAD"]),
                Route("/index.html", self._index, methods=["GET", "HEAD"]),
                Route("/web/limits.js", self._limits, methods=["GET", "HEAD"]),
                Mount("/web", app=self.assets)]

    async def _index(self, request: Request) -> Response:
        return await self.assets.get_response("index.html", request.scope)

    async def _limits(self, request: Request) -> Response:
        headers = {**_security_headers(html=False), "cache-control": REVALIDATE}
        return Response(limits_module(self.min_sampling_interval_ms), headers=headers,
                        media_type="text/javascript; charset=utf-8")
