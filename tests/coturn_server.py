"""The tests' TURN server: Debian's coturn (`turnserver`) on loopback, one per test session,
and a minimal TURN client to ask it for a relay.

The server checks credentials the way kvslite's GetIceServerConfig makes them (coturn's
TURN REST scheme, `--use-auth-secret`): pass `coturn.kvslite_args()` to `kvslite serve` and
the credentials it hands out are the ones coturn accepts. It listens on 127.0.0.1 only, UDP
and TCP on one free port, relays on 127.0.0.1 to loopback peers (so two browsers on this
machine reach each other through it with `iceTransportPolicy: 'relay'`), keeps its files in
a temporary directory and logs to `coturn.log_path`. It runs as the test's own child
process, as root or not.

Fixture: `coturn` (session scope), a running `TurnServer`; conftest.py imports it. Where
coturn is not installed, whatever needs it is skipped (a failure on CI: tests/engines.py).

    def test_relay(coturn, start_server):
        server = start_server(*coturn.kvslite_args())
        ...
        assert turn_allocate(coturn.port, username, password).relayed is not None
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from engines import need

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
REALM = "kvslite"
SECRET = "kvslite-test-turn-secret"


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class TurnServer:
    def __init__(self, directory: Path, secret: str = SECRET, realm: str = REALM):
        self.directory = directory
        self.secret = secret
        self.realm = realm
        self.port = free_udp_and_tcp_port()
        self.log_path = directory / "coturn.log"
        self.proc: subprocess.Popen | None = None

    def uris(self) -> list[str]:
        return [f"turn:127.0.0.1:{self.port}?transport=udp",
                f"turn:127.0.0.1:{self.port}?transport=tcp"]

    def kvslite_args(self) -> list[str]:
        """`kvslite serve` flags that hand out credentials for this server."""
        return [arg for uri in self.uris() for arg in ("--turn-uri", uri)] + \
            ["--turn-secret", self.secret]

    def command(self) -> list[str]:
        d = self.directory
        return [TURNSERVER, "-n",  # no configuration file: only these flags
                "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
                f"--listening-port={self.port}", "--allow-loopback-peers", "--no-cli",
                "--use-auth-secret", f"--static-auth-secret={self.secret}",
                f"--realm={self.realm}", "--fingerprint", "--no-tls", "--no-dtls",
                "--no-rfc5780",  # else it also takes port + 1
                f"--userdb={d / 'turndb'}", f"--pidfile={d / 'turnserver.pid'}",
                f"--log-file={self.log_path}", "--simple-log", "--no-stdout-log"]

    def start(self, timeout_s: float = 10) -> "TurnServer":
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, cwd=self.directory)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited early ({self.proc.returncode}):\n"
                                   f"{self.output()}")
            if stun_binding(self.port, timeout_s=0.2):
                return self
        self.stop()
        raise RuntimeError(f"turnserver did not answer within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def coturn():
    """A running coturn on loopback for the whole session (see the module docstring)."""
    need(os.access(TURNSERVER, os.X_OK), "coturn (Debian's coturn package)")
    directory = Path(tempfile.mkdtemp(prefix="kvslite-coturn-"))
    server = TurnServer(directory)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- a minimal STUN/TURN client (RFC 5389, RFC 5766), enough to ask for one relay ----------

MAGIC_COOKIE = 0x2112A442
BINDING, ALLOCATE = 0x0001, 0x0003
SUCCESS, ERROR = 0x0100, 0x0110  # added to the method: its success or error response
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
REALM_ATTR, NONCE, XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0016, 0x0019
UDP = 17


@dataclass
class Allocation:
    error: int | None  # the ERROR-CODE of a refusal (401: bad credentials), else None
    relayed: tuple[str, int] | None  # XOR-RELAYED-ADDRESS of a granted relay


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _message(method: int, transaction: bytes, attributes: bytes, key: bytes | None = None
             ) -> bytes:
    if key is None:
        return struct.pack("!HHI", method, len(attributes), MAGIC_COOKIE) + transaction + \
            attributes
    # MESSAGE-INTEGRITY covers the header with its length counting the integrity attribute
    header = struct.pack("!HHI", method, len(attributes) + 24, MAGIC_COOKIE) + transaction
    digest = hmac.new(key, header + attributes, hashlib.sha1).digest()
    return header + attributes + _attribute(MESSAGE_INTEGRITY, digest)


def _parse(data: bytes) -> tuple[int, dict[int, bytes]]:
    kind, length = struct.unpack("!HH", data[:4])
    attributes, offset = {}, 20
    while offset < 20 + length:
        attr, size = struct.unpack("!HH", data[offset:offset + 4])
        attributes.setdefault(attr, data[offset + 4:offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return kind, attributes


def _exchange(sock: socket.socket, message: bytes) -> tuple[int, dict[int, bytes]]:
    sock.send(message)
    return _parse(sock.recv(2048))


def stun_binding(port: int, host: str = "127.0.0.1", timeout_s: float = 1) -> bool:
    """Whether a STUN server answers a Binding request on host:port (UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
        try:
            kind, _ = _exchange(sock, _message(BINDING, os.urandom(12), b""))
        except OSError:  # timeout, or refused while nothing listens yet
            return False
        return kind == BINDING | SUCCESS


def turn_allocate(port: int, username: str, password: str, host: str = "127.0.0.1",
                  timeout_s: float = 5) -> Allocation:
    """Ask the TURN server for a UDP relay with long-term credentials: the first request
    draws the realm and nonce (401), the second is signed with MD5(user:realm:password)."""
    transport = _attribute(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
        kind, attrs = _exchange(sock, _message(ALLOCATE, os.urandom(12), transport))
        assert kind == ALLOCATE | ERROR and _error_code(attrs) == 401, "expected a challenge"
        realm = attrs[REALM_ATTR]
        key = hashlib.md5(username.encode() + b":" + realm + b":" + password.encode()).digest()
        signed = transport + _attribute(USERNAME, username.encode()) + \
            _attribute(REALM_ATTR, realm) + _attribute(NONCE, attrs[NONCE])
        kind, attrs = _exchange(sock, _message(ALLOCATE, os.urandom(12), signed, key))
    if kind == ALLOCATE | SUCCESS:
        return Allocation(None, _xor_address(attrs[XOR_RELAYED_ADDRESS]))
    return Allocation(_error_code(attrs), None)


def _error_code(attributes: dict[int, bytes]) -> int:
    value = attributes[ERROR_CODE]
    return (value[2] & 0x7) * 100 + value[3]


def _xor_address(value: bytes) -> tuple[str, int]:
    port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
    address = struct.unpack("!I", value[4:8])[0] ^ MAGIC_COOKIE
    return socket.inet_ntoa(struct.pack("!I", address)), port
