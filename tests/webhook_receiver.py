"""A webhook receiver for tests, answering as told: normally, with a redirect, trickling
its answer a byte at a time, or with a huge body. It records every request and how each
connection ended."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Receiver:
    """`answer` is one of "ok", "redirect", "trickle", "huge"; `requests` holds
    (method, path) of each request; `cut` is set when kvslite closed a connection before
    the answer was all sent, and `held_s` says how long that answer had been going."""

    def __init__(self, answer: str = "ok", *, huge_bytes: int = 256 << 20,
                 tls: tuple[Path, Path] | None = None):
        self.answer = answer
        self.huge_bytes = huge_bytes
        self.requests: list[tuple[str, str]] = []
        self.sent = 0  # bytes of the last answer the socket took
        self.held_s: float | None = None
        self.cut = threading.Event()
        self.done = threading.Event()  # the last answer ended, sent whole or cut
        self.stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver._handle(self)

            def do_GET(self):
                receiver._handle(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # HTTPS with this (certificate, key)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append((handler.command, handler.path))
        started = time.monotonic()
        self.sent = 0
        try:
            for chunk in self._answer(handler):
                handler.wfile.write(chunk)
                handler.wfile.flush()
                self.sent += len(chunk)
        except OSError:  # kvslite closed the connection
            self.held_s = time.monotonic() - started
            self.cut.set()
        finally:
            handler.close_connection = True
            self.done.set()

    def _answer(self, handler: BaseHTTPRequestHandler):
        if self.answer == "redirect" and handler.command == "POST":
            yield (f"HTTP/1.1 302 Found\r\nLocation: {self.url('/internal')}\r\n"
                   f"Content-Length: 0\r\n\r\n").encode()
        elif self.answer == "trickle":  # a status line that never ends, 5 bytes a second
            for byte in b"HTTP/1.1 200 " + b"O" * 100_000:
                if self.stop.wait(0.2):
                    return
                yield bytes([byte])
        elif self.answer == "huge":
            yield f"HTTP/1.1 200 OK\r\nContent-Length: {self.huge_bytes}\r\n\r\n".encode()
            chunk = bytes(1 << 20)
            for _ in range(self.huge_bytes >> 20):
                yield chunk
        else:
            yield b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
