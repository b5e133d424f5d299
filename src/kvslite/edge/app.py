"""The HTTP edge: one ASGI app serving all three KVS APIs on one port.

A request is routed on `POST <requestUri>` from botocore's models, its size
bounded, its SigV4 signature checked, its JSON validated against the model,
and handed to the provider method named after the operation
(`CreateStream` -> `create_stream`). Whatever goes wrong becomes an AWS-style
error: `x-amzn-ErrorType` header plus `{"message": ...}`; never a traceback.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from botocore import xform_name
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from kvslite.config import Settings
from kvslite.edge import model, sigv4
from kvslite.errors import ApiError

log = logging.getLogger("kvslite.edge")

# A streaming operation the botocore models do not describe (PutMedia): it gets the
# raw request (already authenticated) and returns a response that may stream.
StreamingHandler = Callable[[Request], Awaitable[Response]]
# A plain HTTP endpoint outside the KVS APIs, matched by path prefix: HLS/DASH session
# URLs (authenticated by their session token, as on AWS) and the web viewer's files.
PageHandler = Callable[[Request], Awaitable[Response]]


class EdgeApp:
    def __init__(
        self,
        settings: Settings,
        providers: dict[str, list[Any]],
        streaming: dict[str, StreamingHandler] | None = None,
        pages: dict[str, PageHandler] | None = None,
    ):
        self.settings = settings
        self.providers = providers  # botocore service name -> provider objects
        self.streaming = streaming or {}  # request path -> handler
        self.pages = pages or {}  # path prefix -> handler
        self.routes = model.routes()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        request_id = str(uuid.uuid4())
        try:
            response = await self._handle(request)
        except ApiError as error:
            response = error_response(error)
        except Exception:
            log.exception("internal error serving %s %s", request.method, request.url.path)
            response = error_response(
                ApiError("InternalFailure", f"Internal server error (request {request_id})",
                         status=500))
        response.headers["x-amzn-RequestId"] = request_id
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        streaming = self.streaming.get(path)
        route = self.routes.get(path)
        if streaming is None and route is None:
            page = self._page_for(path)
            if page is not None:
                return await page(request)
            raise ApiError("UnknownOperationException", f"No KVS operation at {path}",
                           status=404)
        if request.method != "POST":
            raise ApiError("MethodNotAllowedException",
                           f"{path} accepts POST only, not {request.method}", status=405)

        if streaming is not None:
            self._authenticate(request, b"")  # streaming bodies sign the empty payload
            return await streaming(request)

        body = await read_body(request, self.settings.max_request_body_bytes)
        self._authenticate(request, body)
        operation = route.operation
        handler = self.handler_for(route)
        if handler is None:
            raise ApiError("NotImplementedException",
                           f"kvslite does not implement {operation.name}", status=501)
        params = model.parse_input(operation, decode_json(body))
        result = await run_in_threadpool(handler, params)
        if isinstance(result, Response):
            return result
        return json_response(model.serialize_output(operation, result))

    def handler_for(self, route: model.Route):
        """The provider method serving `route`, or None if kvslite lacks it."""
        method = xform_name(route.name)
        for provider in self.providers.get(route.service, []):
            if hasattr(provider, method):
                return getattr(provider, method)
        return None

    def _page_for(self, path: str) -> PageHandler | None:
        matches = [prefix for prefix in self.pages if path.startswith(prefix)]
        return self.pages[max(matches, key=len)] if matches else None

    def _authenticate(self, request: Request, body: bytes) -> None:
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
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over `limit` before buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError("SerializationException", "Content-Length is not a number")
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
    return ApiError("RequestEntityTooLargeException",
                    f"The request body exceeds the limit of {limit} bytes", status=413)


def decode_json(body: bytes) -> object:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError("SerializationException", f"The request body is not valid JSON: {e}"
                       ) from None


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status,
                    headers=headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    status = error.status or model.error_statuses().get(error.code, 400)
    return json_response({"message": error.message}, status,
                         headers={"x-amzn-ErrorType": error.code})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
