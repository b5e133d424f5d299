"""`POST /`: the IAM and STS APIs over AWS's query protocol (edge/query_protocol.py).

Both services post to `/`; the form's Action picks the operation (STS's GetCallerIdentity,
else IAM's), and the SigV4 credential scope must name that operation's service. Errors,
SigV4's included, are answered in the XML shape those clients parse.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from kvslite.server.api_errors import INVALID_ACTION, QUERY_SIGNING_ERRORS, ApiError
from kvslite.server.edge import query_protocol
from kvslite.server.edge.access_log import OPERATION, PRINCIPAL

XML = "text/xml"


class QueryApi:
    """`handlers[service][Action]` take the typed parameters and the caller's principal;
    `await authenticate(request, body, service)` checks the signature and returns the
    principal."""

    def __init__(self, handlers: dict[str, dict[str, Callable]], authenticate: Callable,
                 read_body: Callable, max_body_bytes: int, request_id_key: str,
                 authorize: Callable | None = None):
        self.handlers = handlers
        self.authorize = authorize  # await it (scope, operation, params): raises if refused
        self.authenticate = authenticate
        self.read_body = read_body
        self.max_body_bytes = max_body_bytes
        self.request_id_key = request_id_key

    async def endpoint(self, request: Request) -> Response:
        request_id = request.scope[self.request_id_key]
        params: dict[str, str] = {}
        service_name = "iam"
        try:
            body = await self.read_body(request, self.max_body_bytes)
            params = query_protocol.parse_form(body)
            if params.get("Action") in self.handlers.get("sts", {}):
                service_name = "sts"
            service = query_protocol.service_model(service_name)
            op = query_protocol.operation(service, params)
            request.scope[OPERATION] = op.name
            principal = await self.authenticate(request, body, service_name)
            request.scope[PRINCIPAL] = principal
            if self.authorize is not None:
                await self.authorize(request.scope, op.name, params)
            handler = self.handlers[service_name].get(op.name)
            if handler is None:
                raise ApiError(INVALID_ACTION, f"kvslite does not implement "
                               f"{op.name}", status=400)
            result = await run_in_threadpool(
                handler, query_protocol.input_params(op, params), principal)
            return Response(query_protocol.response(op, result, request_id), media_type=XML)
        except ApiError as e:
            if e.code in QUERY_SIGNING_ERRORS:  # IAM and STS name them their own way
                e = ApiError(QUERY_SIGNING_ERRORS[e.code], e.message, status=e.status)
            service = query_protocol.service_model(service_name)
            return Response(query_protocol.error(service, e, request_id),
                            status_code=e.status or 400, media_type=XML)
