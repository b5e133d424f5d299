"""The steps every request passes through on its way to the router, one ASGI middleware each.

From the outside in:

- `RequestIds`: gives the request its id (`x-amzn-RequestId`, the access log, error messages);
- `AccessLog`: one line per request once it is over (edge/access_log.py);
- `EdgeHeaders`: the request id and the security headers on every response;
- `ErrorResponses`: whatever goes wrong becomes an AWS-style error, never a traceback;
- `MediaAdmission`: long-lived media connections may not take the last connections.
"""

from __future__ import annotations

import logging
import uuid

from starlette.exceptions import HTTPException

from kvslite.server import metrics
from kvslite.server.edge.access_log import Exchange
from kvslite.server.edge.access_log import log as access_log
from kvslite.server.api_errors import (
    INTERNAL_FAILURE,
    METHOD_NOT_ALLOWED,
    SERVICE_UNAVAILABLE,
    UNKNOWN_OPERATION,
    ApiError,
)

log = logging.getLogger("kvslite.edge")

REQUEST_ID = "kvslite.request_id"  # the scope key RequestIds fills in
# connections that may stay open for minutes, by the kind the metrics count them as
LONG_LIVED_PATHS = {"/putMedia": "put_media", "/getMedia": "get_media"}
_HTTP_ERRORS = {404: UNKNOWN_OPERATION, 405: METHOD_NOT_ALLOWED}

# Every response is data, never a page to render, except the web viewer's HTML, which
# brings its own policy: nothing served may run script or be framed on this origin,
# where the viewer keeps its secret key.
_LOCKED_DOWN = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; sandbox"


class RequestIds:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        scope[REQUEST_ID] = str(uuid.uuid4())
        await self.app(scope, receive, send)


class AccessLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        exchange = Exchange(scope[REQUEST_ID], scope)

        async def observed(message) -> None:
            exchange.observe(message)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            access_log.info(exchange.line())


class EdgeHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = edge_headers(message.get("headers", []),
                                                  scope[REQUEST_ID])
            await send(message)

        await self.app(scope, receive, with_headers)


def edge_headers(headers: list, request_id: str) -> list:
    names = {name.lower() for name, _ in headers}
    added = [(b"x-amzn-requestid", request_id.encode())]
    if b"x-content-type-options" not in names:
        added.append((b"x-content-type-options", b"nosniff"))
    if b"content-security-policy" not in names:
        added.append((b"content-security-policy", _LOCKED_DOWN.encode()))
    return [*headers, *added]


class ErrorResponses:
    """Exceptions as AWS-style errors; `error_response` is how one is written (the edge's
    JSON shape, kept in app.py)."""

    def __init__(self, app, error_response):
        self.app = app
        self.error_response = error_response

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:  # a streaming response broke off: nothing more can be said
                log.exception("error while streaming %s", scope.get("path"))
                return
            error = as_api_error(exc, scope)
            metrics.ERRORS.labels(error.code).inc()
            await self.error_response(error)(scope, receive, send)


def as_api_error(exc: Exception, scope) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    path = scope.get("path", "")
    if isinstance(exc, HTTPException) and exc.status_code in _HTTP_ERRORS:
        what = (f"No KVS operation at {path}" if exc.status_code == 404
                else f"{path} does not accept {scope.get('method')}")
        return ApiError(_HTTP_ERRORS[exc.status_code], what, status=exc.status_code)
    request_id = scope[REQUEST_ID]
    log.error("internal error serving %s %s (request %s)", scope.get("method"), path,
              request_id, exc_info=exc)
    return ApiError(INTERNAL_FAILURE, f"Internal server error (request {request_id})",
                    status=500)


class MediaAdmission:
    """Counts PutMedia and GetMedia connections; past `limit` (None: no limit) one more is
    refused with 503, keeping the rest of the connection cap for API calls."""

    def __init__(self, app, limit: int | None):
        self.app = app
        self.limit = limit
        self.open = 0

    async def __call__(self, scope, receive, send) -> None:
        kind = LONG_LIVED_PATHS.get(scope.get("path"))
        if kind is None:
            await self.app(scope, receive, send)
            return
        self.open += 1
        metrics.CONNECTIONS.labels(kind).inc()
        try:
            self._check_limit()
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            metrics.CONNECTIONS.labels(kind).dec()

    def _check_limit(self) -> None:
        if self.limit is not None and self.open > self.limit:
            raise ApiError(SERVICE_UNAVAILABLE, f"kvslite is serving {self.limit} media "
                           f"connections, its limit; the rest are kept for API calls",
                           status=503)
