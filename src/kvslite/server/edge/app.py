"""The HTTP edge: one ASGI app serving all three KVS APIs on one port.

Starlette's Router does the routing. Every `POST <requestUri>` of botocore's models is a
route: its body size bounded, its SigV4 signature checked, its JSON validated against
the model and handed to the handler registered for the operation. Other routes (PutMedia,
the HLS/DASH session pages, the web viewer) are plain Starlette routes handed in by the
server. Whatever goes wrong becomes an AWS-style error: `x-amzn-ErrorType` header plus
`{"message": ...}`; never a traceback. The steps every request passes through (request
ids, security headers, errors, access log, media admission) are in edge/middleware.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from kvslite.server.config import Settings
from kvslite.server.edge import model, sigv4
from kvslite.server.edge.access_log import OPERATION, PRINCIPAL, STREAM
from kvslite.server.edge.authorization import Authorizer
from kvslite.server.edge.query_api import QueryApi
from kvslite.server.edge.cors import Cors, parse_origins
from kvslite.server.edge.websocket import SignalingEndpoint
from kvslite.server.edge.middleware import (
    REQUEST_ID,
    AccessLog,
    EdgeHeaders,
    ErrorResponses,
    MediaAdmission,
    RequestIds,
)
from kvslite.server.api_errors import NOT_IMPLEMENTED, REQUEST_ENTITY_TOO_LARGE, SERIALIZATION, ApiError
from kvslite.server.ops.requests import REQUESTS
from kvslite.server.ops.wire import from_wire

# An operation's handler takes its typed request (kvslite.server.ops.requests) and returns the
# output members (serialized by the model) or a Response of its own (streaming media).
Handler = Callable[[Any], Any]
# PutMedia is not in botocore's models: it gets the raw (authenticated) request and
# returns an ASGI response that may stream while the body is still arriving.
StreamingHandler = Callable[[Request], Awaitable[Any]]


class EdgeApp:
    def __init__(self, settings: Settings, handlers: dict[str, Handler],
                 put_media: StreamingHandler | None = None,
                 routes: Iterable[BaseRoute] = (), max_media_connections: int | None = None,
                 access_log: bool = False, signaling: SignalingEndpoint | None = None,
                 lookup: sigv4.Lookup | None = None,
                 reads_store: Callable[[str, str | None], bool] | None = None,
                 query_handlers: dict[str, dict[str, Callable]] | None = None,
                 authorizer: Authorizer | None = None):
        self.settings = settings
        self.authorizer = authorizer  # who may do what (edge/authorization.py)
        # who holds an access key (iam/credentials.py); else the settings' single key
        self.lookup = lookup
        # (access key id, session token) -> whether `lookup` reads the metadata store
        self.reads_store = reads_store
        self.signaling = signaling  # WebSocket upgrades on any path (edge/websocket.py)
        self.handlers = _checked(handlers)
        kvs = [Route(path, self._operation(route), methods=["POST"])
               for path, route in model.routes().items()]
        if put_media is not None:
            kvs.append(Route("/putMedia", self._streaming(put_media), methods=["POST"]))
        if query_handlers:  # IAM and STS: POST / (the web viewer is GET /)
            kvs.append(Route("/", QueryApi(query_handlers, self._authenticate, read_body,
                                           settings.max_request_body_bytes, REQUEST_ID,
                                           self._authorize_iam if authorizer else None
                                           ).endpoint, methods=["POST"]))
        self.router = Router([*kvs, *routes], redirect_slashes=False)
        self.pipeline = _pipeline(self.router, max_media_connections, access_log,
                                  parse_origins(settings.cors_allow_origins))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and self.signaling is not None:
            await self.signaling(scope, receive, send, request_id=str(uuid.uuid4()))
            return
        if scope["type"] != "http":
            return  # no lifespan events: the server runs with lifespan off
        scope["app"] = self  # Starlette raises HTTPException instead of answering plain text
        await self.pipeline(scope, receive, send)

    # -- the KVS operations -----------------------------------------------------------

    def _operation(self, route: model.Route):
        operation = route.operation
        handler = self.handlers.get(route.name)
        request_type = REQUESTS[route.name]

        async def endpoint(request: Request) -> Response:
            request.scope[OPERATION] = operation.name
            body = await read_body(request, self.settings.max_request_body_bytes)
            await self._authenticate(request, body)
            if handler is None:
                raise ApiError(NOT_IMPLEMENTED,
                               f"kvslite does not implement {operation.name}", status=501)
            params = model.parse_input(operation, decode_json(body))
            request.scope[STREAM] = params.get("StreamName") or params.get("StreamARN")
            await self._authorize(request.scope, route.name, params)
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
            await self._authenticate(request, b"", streaming=True)  # signs the empty payload
            await self._authorize(request.scope, "PutMedia", {
                "StreamName": request.headers.get("x-amzn-stream-name"),
                "StreamARN": request.headers.get("x-amzn-stream-arn")})
            return await handler(request)

        return endpoint

    async def _authorize(self, scope: MutableMapping[str, Any], operation: str, params: dict, *,
                         iam: bool = False) -> None:
        """AccessDeniedException (the IAM API's AccessDenied with `iam`) unless the caller's
        policies allow the request. A check may read the store (a name's ARN, a user's
        path): on a worker thread, and only for a caller whose policies are evaluated."""
        if self.authorizer is not None and self.authorizer.evaluates(scope):
            check = self.authorizer.check_iam if iam else self.authorizer.check
            await run_in_threadpool(check, scope, operation, params)

    async def _authorize_iam(self, scope: MutableMapping[str, Any], operation: str,
                             params: dict) -> None:
        await self._authorize(scope, operation, params, iam=True)

    async def _authenticate(self, request: Request, body: bytes,
                            service: str = sigv4.SIGNING_NAME, *, streaming: bool = False):
        """Check the signature; the principal who signed goes in the scope and is returned
        (None without credentials configured, auth_enabled: anything goes). A user's key
        is looked up in the metadata store (round trips on PostgreSQL), on a worker thread
        so as not to hold up every other request on the event loop; the administrator's key
        and session tokens are checked in place (a hop costs ~0.6 ms a request)."""
        if not self.settings.auth_enabled:
            return None
        key_id = sigv4.signing_key_id(request.headers.get("authorization", ""))
        if key_id is not None and self.reads_store is not None and self.reads_store(
                key_id, request.headers.get("x-amz-security-token")):
            return await run_in_threadpool(self._verify, request, body, service, streaming)
        return self._verify(request, body, service, streaming)

    def _verify(self, request: Request, body: bytes, service: str, streaming: bool):
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.raw:
            headers.setdefault(name.decode("latin-1").lower(), []).append(
                value.decode("latin-1"))
        principal = sigv4.verify(
            lookup=self.lookup, access_key_id=self.settings.access_key_id or "",
            secret_access_key=self.settings.secret_access_key or "",
            method=request.method,
            path=request.scope.get("raw_path", b"").decode("latin-1").split("?")[0]
            or request.url.path,
            query_string=request.scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            max_skew_s=self.settings.max_clock_skew_s,
            streaming=streaming,
            service=service,
        )
        request.scope[PRINCIPAL] = principal
        return principal


def _pipeline(router: Router, max_media_connections: int | None,
              access_log: bool, cors_origins: frozenset[str]) -> ASGIApp:
    """The router inside the edge's steps (edge/middleware.py, edge/cors.py), the first
    step outermost."""
    app: ASGIApp = MediaAdmission(router, max_media_connections)
    app = EdgeHeaders(Cors(ErrorResponses(app, error_response), cors_origins, error_response))
    if access_log:
        app = AccessLog(app)
    return RequestIds(app)


def _checked(handlers: dict[str, Handler]) -> dict[str, Handler]:
    """Handlers are registered by operation name; a name the models lack is a bug."""
    known = {route.name for route in model.routes().values()}
    unknown = set(handlers) - known
    if unknown:
        raise ValueError(f"handlers for operations the KVS models lack: {sorted(unknown)}")
    return dict(handlers)


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
