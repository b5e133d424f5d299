"""The WebRTC signaling WebSocket (ConnectAsMaster / ConnectAsViewer), on any path.

The SDKs open `wss://<endpoint>/?X-Amz-ChannelARN=...[&X-Amz-ClientId=...]&X-Amz-...`,
presigned with SigV4 (WEBRTC-NOTES §4.1). Everything is checked BEFORE the upgrade, and a
refusal is a plain HTTP error with the AWS-style body and `x-amzn-ErrorType`:

- 400 InvalidArgumentException: no channel ARN, or a bad ClientId (viewers send one, which
  may not start with `AWS_`; a master sends none);
- 403 (the SigV4 codes): a missing, wrong or expired signature;
- 403 AccessDeniedException: the caller's policies do not allow ConnectAsMaster or
  ConnectAsViewer on the channel (edge/authorization.py);
- 404 ResourceNotFoundException: no such channel (or it is being deleted);
- 400 ClientLimitExceededException: the channel has all the viewers it may have.

An accepted socket is handed to the hub (server/signaling/hub.py), which routes its
messages; here it is only read, and ended with GO_AWAY when its lifetime or idle time is
up. No `Sec-WebSocket-Protocol` is echoed: the SDKs ask for none. One access-log line per
upgrade, accepted (status 101, for the connection's whole life) or refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from kvslite.server import metrics
from kvslite.server.api_errors import INVALID_ARGUMENT, RESOURCE_NOT_FOUND, ApiError
from kvslite.server.config import Settings
from kvslite.server.edge import model, sigv4
from kvslite.server.edge.access_log import OPERATION, PRINCIPAL, STREAM, Exchange
from kvslite.server.edge.authorization import Authorizer
from kvslite.server.edge.access_log import log as access_log
from kvslite.server.signaling.hub import MASTER, VIEWER, Hub

CLIENT_ID = re.compile(r"[a-zA-Z0-9_.-]{1,256}")
DELETING = "DELETING"


class Channels(Protocol):
    """What the endpoint needs of kvslite.server.signaling.channels.Channels."""

    def find(self, arn: str): ...


class SocketPeer:
    """A Starlette WebSocket as the hub's Peer: a socket already gone is not an error."""

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket

    async def send(self, text: str) -> None:
        try:
            await self.websocket.send_text(text)
        except (RuntimeError, OSError, WebSocketDisconnect):
            # The client is gone: its receive loop (SignalingEndpoint._serve) sees the
            # disconnect and takes it out of the hub; nothing is owed to a closed socket.
            pass

    async def close(self) -> None:
        try:
            await self.websocket.close(1000)
        except (RuntimeError, OSError):
            pass  # closed already, by the client or an earlier close: the outcome wanted


class SignalingEndpoint:
    def __init__(self, settings: Settings, channels: Channels, hub: Hub, *, access_log: bool,
                 lookup: sigv4.Lookup | None = None,
                 reads_store: Callable[[str, str | None], bool] | None = None,
                 authorizer: Authorizer | None = None):
        self.lookup = lookup  # who holds an access key; else the settings' single key
        # (access key id, session token) -> whether `lookup` reads the metadata store
        self.reads_store = reads_store
        self.authorizer = authorizer  # who may connect to which channel
        self.settings = settings
        self.channels = channels
        self.hub = hub
        self.access_log = access_log

    async def __call__(self, scope, receive, send, request_id: str) -> None:
        websocket = WebSocket(scope, receive, send)
        scope.setdefault("method", "GET")  # for the access log: an upgrade is a GET
        exchange = Exchange(request_id, scope)
        try:
            role, client_id, channel = await self._admit(websocket)
        except ApiError as error:
            metrics.SIGNALING_REFUSALS.labels(error.code).inc()
            response = _error_response(error)
            response.headers["x-amzn-RequestId"] = request_id
            exchange.status, exchange.sent = response.status_code, len(response.body)
            await websocket.send_denial_response(response)
            self._log(exchange)
            return
        await websocket.accept()  # no subprotocol: none was asked for
        exchange.status = 101
        try:
            await self._serve(websocket, role, client_id, channel)
        finally:
            self._log(exchange)

    async def _admit(self, websocket: WebSocket):
        """Role, ClientId and channel of a request that may upgrade; else the ApiError."""
        scope = websocket.scope
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        params = dict(query)
        arn = params.get("X-Amz-ChannelARN", "")
        client_id = params.get("X-Amz-ClientId")
        role = MASTER if client_id is None else VIEWER
        scope[OPERATION] = "ConnectAs" + role.title()
        scope[STREAM] = arn or None
        if not arn:
            raise ApiError(INVALID_ARGUMENT, "X-Amz-ChannelARN is required")
        if client_id is not None and (not CLIENT_ID.fullmatch(client_id)
                                      or client_id.startswith("AWS_")):
            raise ApiError(INVALID_ARGUMENT, "X-Amz-ClientId must match [a-zA-Z0-9_.-]{1,256} "
                                             "and may not start with AWS_")
        if self._reads_store(query):  # a user's key: its lookup must not hold the loop
            await run_in_threadpool(self._authenticate, websocket, query)
        else:
            self._authenticate(websocket, query)
        if self.authorizer is not None and self.authorizer.evaluates(scope):
            self.authorizer.check(scope, scope[OPERATION], {"ChannelARN": arn})  # no lookup
        channel = await run_in_threadpool(self.channels.find, arn)
        if channel is None or channel.status == DELETING:
            raise ApiError(RESOURCE_NOT_FOUND, f"The signaling channel {arn} does not exist")
        self.hub.admit(arn, role, client_id)
        return role, client_id, channel

    def _reads_store(self, query: list[tuple[str, str]]) -> bool:
        params = dict(query)
        key_id = params.get("X-Amz-Credential", "").split("/")[0]
        return bool(key_id) and self.reads_store is not None and self.reads_store(
            key_id, params.get("X-Amz-Security-Token"))

    def _authenticate(self, websocket: WebSocket, query: list[tuple[str, str]]) -> None:
        settings = self.settings
        if not settings.auth_enabled:  # anonymous mode, as for every other API
            return
        raw_path = websocket.scope.get("raw_path") or websocket.scope["path"].encode()
        websocket.scope[PRINCIPAL] = sigv4.verify_presigned(
            lookup=self.lookup, access_key_id=settings.access_key_id or "",
            secret_access_key=settings.secret_access_key or "",
            path=raw_path.decode("latin-1").split("?")[0] or "/",
            query=query, host=websocket.headers.get("host", ""),
            max_skew_s=settings.max_clock_skew_s)

    async def _serve(self, websocket: WebSocket, role: str, client_id: str | None,
                     channel) -> None:
        hub = self.hub
        conn = await hub.join(channel.arn, role, client_id, SocketPeer(websocket),
                              message_ttl_s=channel.message_ttl_seconds)
        try:
            while not conn.ended:
                left = hub.time_left(conn)
                if left <= 0:
                    await hub.end(conn)  # lifetime or idle time is up: GO_AWAY, close
                    break
                try:
                    message = await asyncio.wait_for(websocket.receive(), left)
                except TimeoutError:
                    continue
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode("utf-8", "replace")
                if text is not None:
                    await hub.receive(conn, text)
        finally:
            hub.leave(conn)

    def _log(self, exchange: Exchange) -> None:
        if self.access_log:
            access_log.info(exchange.line())


def _error_response(error: ApiError) -> Response:
    status = error.status or model.error_statuses().get(error.code, 400)
    return Response(json.dumps({"message": error.message}), status_code=status,
                    media_type="application/json",
                    headers={"x-amzn-ErrorType": error.code})
