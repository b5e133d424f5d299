"""Connections from hostile clients: a header deadline, a connection cap, quiet logs.

uvicorn's HTTP/1.1 protocol waits forever for a request head and accepts connections
until the process runs out of file descriptors, after which its accept loop logs an
error for every attempt. `GuardedH11Protocol` adds what a server on a network needs:

- a request head must be complete within `header_timeout_s` of the connection opening
  (or of the previous response on a kept-alive connection), else the connection closes;
- at most `max_connections` are open at once: one more is answered `503` and closed at
  once, a fast refusal instead of a hang, and well before descriptors run out.

Over HTTPS both hold from accept, so the TLS handshake is inside them (`edge/tls.py`).

uvicorn has no public seam for either: `limit_concurrency` answers 503 only once a request
head has arrived, and `timeout_keep_alive` starts after a response, so neither bounds a
connection that never completes its head or its TLS handshake. Hence a subclass of its
h11 protocol, whose private attributes may change in any minor release: pyproject pins
uvicorn below the next minor the suite has not run on (tests/test_dependencies.py).

`RepeatFilter` keeps a flood of identical log lines (an accept loop failing, thousands
of refused connections) to one line per interval with a count of what it suppressed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

from kvslite.server.api_errors import SERVICE_UNAVAILABLE

log = logging.getLogger("kvslite.edge")

_REFUSAL_BODY = json.dumps({"message": "kvslite is at its connection limit; retry shortly"})
REFUSAL = (
    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    f"x-amzn-ErrorType: {SERVICE_UNAVAILABLE}\r\nconnection: close\r\n"
    f"content-length: {len(_REFUSAL_BODY)}\r\n\r\n{_REFUSAL_BODY}"
).encode()


SPARE_DESCRIPTORS = 64  # for the database, media files and logs


def raise_descriptor_limit() -> None:
    """Use all the open files the system allows this process (the soft limit is often 1024
    where the hard one is far higher): connections are capped below it anyway."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, 65536), hard))


def default_max_connections() -> int:
    """What the process's descriptor limit allows, keeping SPARE_DESCRIPTORS free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 4096
    return max(8, min(4096, soft - SPARE_DESCRIPTORS))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a connection cap."""

    # set by guarded_protocol from the Settings, which hold their defaults
    header_timeout_s: float
    max_connections: int
    handshaking = False  # HTTPS: from accept until the TLS handshake ends
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        if self.handshaking:  # HTTPS: the slot and the deadline were taken at accept
            self.handshaking = False
            super().connection_made(transport)
            return
        if self.at_connection_limit():
            self.refuse(transport, REFUSAL)
            return
        super().connection_made(transport)
        self._await_request_head()

    def at_connection_limit(self) -> bool:
        return len(self.connections) >= self.max_connections

    def refuse(self, transport, answer: bytes) -> None:
        self.transport = transport  # connection_lost expects it
        transport.write(answer)
        transport.close()
        log.warning("refused a connection: %d open, the limit", len(self.connections))

    def begin_handshake(self, tcp) -> None:
        """HTTPS: take a slot and start the head deadline at accept, so that the TLS
        handshake counts against both like a request head still on its way."""
        self.handshaking = True
        self.connections.add(self)
        self.transport = tcp  # what the deadline and a server shutdown close until then
        self._await_request_head()

    def handshake_ended(self) -> None:
        """The TLS handshake is over; if it failed (or the deadline cut it off), the
        connection is gone without a `connection_lost`: free its slot here."""
        if self.handshaking:
            self.handshaking = False
            self._cancel_head_deadline()
            self.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._cycle_awaited:
            self._cancel_head_deadline()  # the head arrived: the request is under way

    def handle_websocket_upgrade(self, event) -> None:
        """The upgrade's head arrived in time: the socket is the WebSocket protocol's from
        here on (it still counts under `max_connections`), and must not be closed as a
        connection that never sent one."""
        self._cancel_head_deadline()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request_head()  # a kept-alive connection gets the same deadline

    def connection_lost(self, exc) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _await_request_head(self) -> None:
        self._cancel_head_deadline()
        self._cycle_awaited = self.cycle
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        deadline = self._head_deadline
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            log.info("closed a connection that sent no complete request head in %.0f s",
                     self.header_timeout_s)
            self.transport.close()


def guarded_protocol(*, max_connections: int, header_timeout_s: float) -> type:
    """The protocol class for uvicorn's `http` setting, with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"max_connections": max_connections, "header_timeout_s": header_timeout_s})


class RepeatFilter(logging.Filter):
    """Let each distinct message through at most once per `interval_s`; the next one after
    a quiet spell says how many were suppressed."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock  # injectable, so a test need not wait out the interval
        self._seen: dict[tuple, list] = {}  # key -> [last emitted at, suppressed count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:80])
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} (and {seen[1]} more like it suppressed)"
        if len(self._seen) > 1000:
            self._seen.clear()  # bounded memory whatever the messages
        self._seen[key] = [now, 0]
        return True
