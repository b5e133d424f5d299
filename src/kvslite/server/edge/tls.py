"""HTTPS whose TLS handshake counts against the connection cap and the header deadline.

asyncio's own TLS (`create_server(ssl=...)`, what uvicorn uses) introduces a connection to
the HTTP protocol only once its handshake has completed, and allows a handshake 60 s: a
client that connects and says nothing holds a descriptor for a minute, outside the
connection cap and the request-head deadline, and a few hundred of them exhaust the
process's open files. So kvslite listens on plain TCP and does the handshake itself, inside
`GuardedH11Protocol`'s limits:

- a connection takes its slot under `max_connections` at accept; past the cap it is closed
  at once (a `503` would need the very handshake that the refusal saves);
- the request-head deadline runs from accept: handshake and request head together must be
  done within `header_timeout_s`, else the connection is closed.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio.sslproto import SSLProtocol  # what create_server(ssl=...) puts on each socket
from pathlib import Path

from kvslite.server.edge.connections import GuardedH11Protocol


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side of TLS with this PEM certificate and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class TlsHandshake(asyncio.Protocol):
    """An accepted TCP connection of an HTTPS server: checked against the cap, then handed
    to asyncio's TLS layer, which introduces the decrypted stream to the HTTP protocol
    once the handshake completes."""

    def __init__(self, http: GuardedH11Protocol, context: ssl.SSLContext):
        self.http = http
        self.context = context

    def connection_made(self, tcp: asyncio.BaseTransport) -> None:
        http = self.http
        if http.at_connection_limit():
            http.refuse(tcp, b"")
            return
        http.begin_handshake(tcp)
        handshake_over = http.loop.create_future()
        handshake_over.add_done_callback(self._handshake_over)
        # the handshake may take what the head deadline leaves (asyncio's default: 60 s);
        # typeshed types the timeout int, asyncio takes any number of seconds
        tls = SSLProtocol(http.loop, http, self.context, handshake_over, server_side=True,
                          ssl_handshake_timeout=http.header_timeout_s)  # type: ignore[arg-type]
        tcp.set_protocol(tls)  # from here on the bytes are the TLS layer's
        tls.connection_made(tcp)

    def _handshake_over(self, done: asyncio.Future) -> None:
        if not done.cancelled():
            done.exception()  # a failed handshake is the client's affair, not a log line
        self.http.handshake_ended()


def https_protocol(http: type[GuardedH11Protocol], context: ssl.SSLContext):
    """uvicorn's `http` setting for HTTPS: each accepted connection starts as a
    `TlsHandshake` around a new `http` protocol."""

    def accept(**uvicorn_args) -> TlsHandshake:
        return TlsHandshake(http(**uvicorn_args), context)

    return accept
