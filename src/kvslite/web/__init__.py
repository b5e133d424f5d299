"""The web viewer: static files served at `/` (the page) and `/web/...` (its assets).

The viewer is plain HTML/CSS/JS talking to the same origin through the public KVS API,
so serving it is only a matter of files. Every servable file is listed once, when the
module loads, into a table keyed by URL path: a request can only ever get one of those
files, whatever `..`, `%2e`, or backslashes it carries. Anything else under the page's
prefix is the edge's usual `UnknownOperationException`, so unknown API paths keep
answering as before.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from kvslite.errors import ApiError

ROOT = Path(__file__).resolve().parent
ASSET_PREFIX = "/web/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# Pinned third-party files carry their version in the name: cache them for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # our own files: always revalidate (cheap, thanks to the ETag)

# The page only ever talks to its own origin; hls.js runs its demuxer in a blob: worker
# and feeds the <video> through MediaSource (blob:); thumbnails are data: URLs.
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
       "worker-src 'self' blob:; connect-src 'self'; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


@dataclass
class Asset:
    path: Path
    content_type: str
    cache_control: str
    body: bytes = field(repr=False)
    etag: str = ""
    _gzipped: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self._gzipped


def _scan(root: Path = ROOT) -> dict[str, Asset]:
    """URL path -> asset, for every servable file under `root` (no Python, no dotfiles)."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (not path.is_file() or path.suffix not in CONTENT_TYPES
                or any(part.startswith((".", "_")) for part in rel.parts)):
            continue
        cache = IMMUTABLE if rel.parts[0] == "vendor" and rel.suffix == ".js" else REVALIDATE
        assets[ASSET_PREFIX + rel.as_posix()] = Asset(
            path, CONTENT_TYPES[path.suffix], cache, path.read_bytes())
    if "/web/index.html" in assets:
        assets["/"] = assets["/index.html"] = assets["/web/index.html"]
    return assets


class WebViewer:
    """The page handler for EdgeApp(pages={"/": WebViewer()})."""

    def __init__(self, root: Path = ROOT):
        self.assets = _scan(root)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        asset = self.assets.get(path)
        if asset is None:
            raise ApiError("UnknownOperationException", f"No KVS operation at {path}",
                           status=404)
        if request.method not in ("GET", "HEAD"):
            raise ApiError("MethodNotAllowedException",
                           f"{path} accepts GET and HEAD only, not {request.method}",
                           status=405)
        headers = {
            "Cache-Control": asset.cache_control,
            "ETag": asset.etag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if asset.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CSP
            headers["X-Frame-Options"] = "DENY"
        if _etag_matches(request.headers.get("if-none-match"), asset.etag):
            return Response(status_code=304, headers=headers)
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", "") and len(body) > 1024:
            body = asset.gzipped()
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers, media_type=asset.content_type)
        return Response(body, headers=headers, media_type=asset.content_type)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in tags or "*" in tags
