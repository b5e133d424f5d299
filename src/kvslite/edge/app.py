"""The HTTP edge: one ASGI app serving all three KVS APIs on one port.

Starlette's Router does the routing. Every `POST <requestUri>` of botocore's models is a
route: its body size bounded, its SigV4 signature checked, its JSON validated against
the model and handed to the handler registered for the operation. Other routes (PutMedia,
the HLS/DASH session pages, the web viewer) are plain Starlette routes handed in by the
server. Whatever goes wrong becomes an AWS-style error: `x-amzn-ErrorType` header plus
`{"message": ...}`; never a traceback.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router

from kvslite import metrics
from kvslite.config import Settings
from kvslite.edge import model, sigv4
from kvslite.edge.access_log import OPERATION, STREAM, Exchange
from kvslite.edge.access_log import log as access_log
from kvslite.errors import (
    INTERNAL_FAILURE,
    METHOD_NOT_ALLOWED,
    NOT_IMPLEMENTED,
    REQUEST_ENTITY_TOO_LARGE,
    SERIALIZATION,
    SERVICE_UNAVAILABLE,
    UNKNOWN_OPERATION,
    ApiError,
)
from kvslite.ops.requests import REQUESTS, from_wire

log = logging.getLogger("kvslite.edge")

# An operation's handler takes its typed request (kvslite.ops.requests) and returns the
# output members (serialized by the model) or a Response of its own (streaming media).
Handler = Callable[[Any], Any]
# PutMedia is not in botocore's models: it gets the raw (authenticated) request and
# returns an ASGI response that may stream while the body is still arriving.
StreamingHandler = Callable[[Request], Awaitable[Any]]

# connections that may stay open for minutes, by the kind the metrics count them as
LONG_LIVED_PATHS = {"/putMedia": "put_media", "/getMedia": "get_media"}
_HTTP_ERRORS = {404: UNKNOWN_OPERATION, 405: METHOD_NOT_ALLOWED}


class EdgeApp:
    def __init__(self, settings: Settings, handlers: dict[str, Handler],
                 put_media: StreamingHandler | None = None,
                 routes: Iterable[BaseRoute] = (), max_media_connections: int | None = None,
                 access_log: bool = False):
        self.settings = settings
        self.access_log = access_log
        # long-lived media connections may not take the last connections: those stay
        # free for the control plane and short reads
        self.max_media_connections = max_media_connections
        self.media_connections = 0
        self.handlers = _checked(handlers)
        kvs = [Route(path, self._operation(route), methods=["POST"])
               for path, route in model.routes().items()]
        if put_media is not None:
            kvs.append(Route("/putMedia", self._streaming(put_media), methods=["POST"]))
        self.router = Router([*kvs, *routes], redirect_slashes=False)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return  # no lifespan events or websockets: the server runs with lifespan off
        request_id = str(uuid.uuid4())
        started = False
        exchange = Exchange(request_id, scope)

        async def send_with_id(message) -> None:
            nonlocal started
            exchange.observe(message)
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _with_edge_headers(message.get("headers", []),
                                                        request_id)
            await send(message)

        scope["app"] = self  # Starlette raises HTTPException instead of answering plain text
        media = LONG_LIVED_PATHS.get(scope.get("path"))
        try:
            if media:
                self._admit_media_connection(media)
            await self.router(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # a streaming response broke off: nothing more can be said
                log.exception("error while streaming %s", scope.get("path"))
                return
            error = _as_api_error(exc, scope, request_id)
            metrics.ERRORS.labels(error.code).inc()
            await error_response(error)(scope, receive, send_with_id)
        finally:
            if media:
                self.media_connections -= 1
                metrics.CONNECTIONS.labels(media).dec()
            if self.access_log:
                access_log.info(exchange.line())

    def _admit_media_connection(self, kind: str) -> None:
        self.media_connections += 1  # counted now; the finally above uncounts it
        metrics.CONNECTIONS.labels(kind).inc()
        limit = self.max_media_connections
        if limit is not None and self.media_connections > limit:
            raise ApiError(SERVICE_UNAVAILABLE, f"kvslite is serving {limit} media "
                           f"connections, its limit; the rest are kept for API calls",
                           status=503)

    # -- the KVS operations -----------------------------------------------------------

    def _operation(self, route: model.Route):
        operation = route.operation
        handler = self.handlers.get(route.name)
        request_type = REQUESTS[route.name]

        async def endpoint(request: Request) -> Response:
            request.scope[OPERATION] = operation.name
            body = await read_body(request, self.settings.max_request_body_bytes)
            self._authenticate(request, body)
            if handler is None:
                raise ApiError(NOT_IMPLEMENTED,
                               f"kvslite does not implement {operation.name}", status=501)
            params = model.parse_input(operation, decode_json(body))
            request.scope[STREAM] = params.get("StreamName") or params.get("StreamARN")
            result = await run_in_threadpool(handler, from_wire(request_type, params))
            if isinstance(result, Response):
                return result
            return json_response(model.serialize_output(operation, result))

        return endpoint

    def _streaming(self, handler: StreamingHandler):
        async def endpoint(request: Request):
            request.scope[OPERATION] = "PutMedia"
            request.scope[STREAM] = (request.headers.get("x-amzn-stream-name")
                                     or request.headers.get("x-amzn-stream-arn"))
            self._authenticate(request, b"", streaming=True)  # signs the empty payload
            return await handler(request)

        return endpoint

    def _authenticate(self, request: Request, body: bytes, *, streaming: bool = False) -> None:
        if not self.settings.auth_enabled:
            return
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.raw:
            headers.setdefault(name.decode("latin-1").lower(), []).append(
                value.decode("latin-1"))
        sigv4.verify(
            access_key_id=self.settings.access_key_id,
            secret_access_key=self.settings.secret_access_key,
            method=request.method,
            path=request.scope.get("raw_path", b"").decode("latin-1").split("?")[0]
            or request.url.path,
            query_string=request.scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            max_skew_s=self.settings.max_clock_skew_s,
            streaming=streaming,
        )


# Every response is data, never a page to render, except the web viewer's HTML, which
# brings its own policy: nothing served may run script or be framed on this origin,
# where the viewer keeps its secret key.
_LOCKED_DOWN = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; sandbox"


def _with_edge_headers(headers: list, request_id: str) -> list:
    names = {name.lower() for name, _ in headers}
    added = [(b"x-amzn-requestid", request_id.encode())]
    if b"x-content-type-options" not in names:
        added.append((b"x-content-type-options", b"nosniff"))
    if b"content-security-policy" not in names:
        added.append((b"content-security-policy", _LOCKED_DOWN.encode()))
    return [*headers, *added]


def _checked(handlers: dict[str, Handler]) -> dict[str, Handler]:
    """Handlers are registered by operation name; a name the models lack is a bug."""
    known = {route.name for route in model.routes().values()}
    unknown = set(handlers) - known
    if unknown:
        raise ValueError(f"handlers for operations the KVS models lack: {sorted(unknown)}")
    return dict(handlers)


def _as_api_error(exc: Exception, scope, request_id: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    path = scope.get("path", "")
    if isinstance(exc, HTTPException) and exc.status_code in _HTTP_ERRORS:
        what = (f"No KVS operation at {path}" if exc.status_code == 404
                else f"{path} does not accept {scope.get('method')}")
        return ApiError(_HTTP_ERRORS[exc.status_code], what, status=exc.status_code)
    log.error("internal error serving %s %s (request %s)", scope.get("method"), path,
              request_id, exc_info=exc)
    return ApiError(INTERNAL_FAILURE, f"Internal server error (request {request_id})",
                    status=500)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over `limit` before buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(SERIALIZATION, "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(REQUEST_ENTITY_TOO_LARGE,
                    f"The request body exceeds the limit of {limit} bytes", status=413)


def decode_json(body: bytes) -> object:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, 4300+ digit integers,
        raise ApiError(SERIALIZATION,  # nesting deeper than the decoder's stack
                       f"The request body is not valid JSON: {str(e)[:200]}") from None


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status,
                    headers=headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    status = error.status or model.error_statuses().get(error.code, 400)
    return json_response({"message": error.message}, status,
                         headers={"x-amzn-ErrorType": error.code})
