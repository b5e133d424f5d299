"""Hostile connections to an HTTPS `kvslite serve`: the TLS handshake counts against the
request-head deadline and the connection cap from accept, exactly like a request head
still on its way, so silent sockets cannot hold the server for asyncio's 60 s handshake
limit or exhaust its open files.

A "silent" socket connects over TCP and never sends a ClientHello. Every connection goes
to 127.0.0.1, every wait is bounded.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from conftest import REGION
from test_hostile_connections import (PARTIAL_HEAD, Observer, cap_under, close_all, connect,
                                      wait_readable)
from test_hostile_connections import enough_descriptors, limited_server  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # hundreds of TLS connections under a small descriptor limit


def tls_args(certificate) -> list[str]:
    cert, key = certificate
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def trusting(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def closed_by_server(sock: socket.socket) -> bool:
    """Whether a readable socket (plain or TLS) was closed rather than sent data."""
    sock.settimeout(1)
    try:
        return sock.recv(65536) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True  # an abrupt end of the TLS stream, or a reset: closed all the same


def closed_within(sock: socket.socket, since: float, limit: float) -> float:
    """Seconds from `since` until the server closed `sock`; fails if it did not in time."""
    readable = wait_readable([sock], timeout=max(0.1, since + limit - time.monotonic()))
    assert readable, f"not closed within {limit} s"
    assert closed_by_server(sock), "the server sent data instead of closing"
    return readable[0] - since


def https_list_streams(server, certificate) -> http.client.HTTPResponse:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5,
                                       context=trusting(certificate))
    conn.request("POST", "/listStreams", body=b"{}",
                 headers={"content-type": "application/json"})
    return conn.getresponse()


def test_the_handshake_counts_against_the_header_deadline(start_server, certificate):
    timeout_s = 2.5
    server = start_server("--header-timeout-s", str(timeout_s), *tls_args(certificate))
    socks = []
    try:
        # silent: no ClientHello at all
        silent = connect(server.port)
        silent_opened = time.monotonic()
        socks.append(silent)

        # a late handshake, then a partial head: the deadline ran from accept, so the
        # connection closes at the deadline, not a full deadline after the handshake
        late = connect(server.port)
        late_opened = time.monotonic()
        socks.append(late)
        time.sleep(1.5)
        late = trusting(certificate).wrap_socket(late, server_hostname="127.0.0.1")
        socks.append(late)
        late.sendall(PARTIAL_HEAD)

        # a prompt handshake and request are served as ever
        response = https_list_streams(server, certificate)
        assert response.status == 200 and b"StreamInfoList" in response.read()

        within = (timeout_s - 0.3, timeout_s + 1.0)
        assert within[0] < closed_within(silent, silent_opened, within[1]) < within[1]
        assert within[0] < closed_within(late, late_opened, within[1]) < within[1]
    finally:
        close_all(socks)
    assert "Traceback" not in server.output()


def test_pending_handshakes_count_against_the_cap(start_server, certificate):
    cap = 5
    server = start_server("--max-connections", str(cap), "--header-timeout-s", "30",
                          *tls_args(certificate))
    time.sleep(0.3)  # the start-up probe's connection is gone
    holders, extra = [], []
    try:
        for _ in range(cap):  # every slot held by a handshake that never starts
            holders.append(connect(server.port))
            time.sleep(0.05)
        assert wait_readable(holders, 0.3) == {}, "a slot holder was closed"

        # past the cap: closed at once, before any handshake
        extra = [connect(server.port) for _ in range(5)]
        readable = wait_readable(extra, 1.0)
        assert sorted(readable) == list(range(5)), f"left hanging: {set(range(5)) - set(readable)}"
        assert all(closed_by_server(sock) for sock in extra)
        assert wait_readable(holders, 0.1) == {}, "a slot holder was closed"

        # a freed slot is usable again
        holders.pop().close()
        deadline = time.monotonic() + 3
        while True:
            try:
                response = https_list_streams(server, certificate)
                break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline, "the freed slot was not reusable"
                time.sleep(0.05)
        assert response.status == 200 and b"StreamInfoList" in response.read()

        # failed handshakes give their slots back: plain HTTP, and sockets closed at once
        for _ in range(2 * cap):
            plain = connect(server.port, PARTIAL_HEAD + b"\r\n")
            assert wait_readable([plain], 2.0) and closed_by_server(plain)
            plain.close()
            connect(server.port).close()
        time.sleep(0.2)
        for _ in range(3):
            response = https_list_streams(server, certificate)
            assert response.status == 200 and b"StreamInfoList" in response.read()

        # a server stopping closes pending handshakes rather than waiting for them
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 3
        assert len(wait_readable(holders, 1.0)) == len(holders)
    finally:
        close_all(holders + extra)
    log = server.output()
    assert "Traceback" not in log and "exception was never retrieved" not in log, log[-3000:]
    assert 1 <= sum("refused a connection" in line for line in log.splitlines()) <= 2


def test_list_streams_over_https_under_a_small_descriptor_limit(limited_server, certificate):
    nofile, timeout_s, count = 256, 2.0, 300
    cap = cap_under(nofile)
    assert 8 <= cap < count - 50
    server = limited_server("--header-timeout-s", str(timeout_s), *tls_args(certificate),
                            nofile=nofile)
    time.sleep(0.3)  # the start-up probe's connection is gone
    kvs = boto3.client("kinesisvideo", endpoint_url=f"https://127.0.0.1:{server.port}",
                       region_name=REGION, aws_access_key_id="AKIDEXAMPLE",
                       aws_secret_access_key="secret", verify=str(certificate[0]),
                       config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                     read_timeout=2))
    socks, opened = [], []
    observer = Observer()
    try:
        for i in range(count):  # paced, as in test_hostile_connections
            socks.append(connect(server.port))
            opened.append(time.monotonic())
            observer.add(i, socks[-1])
            observer.poll(0)
            time.sleep(0.003)

        # the ones past the cap are closed at once, the others at the deadline
        observer.wait(range(cap, count), until=opened[-1] + 1.0)
        refused_late = [i for i in range(cap, count) if i not in observer.readable]
        held_early = [i for i in range(cap) if i in observer.readable]

        # ListStreams answers once the silent handshakes are cut off, not after 60 s
        answered, attempts = None, 0
        while answered is None and time.monotonic() < opened[0] + timeout_s + 6:
            attempts += 1
            try:
                assert kvs.list_streams()["StreamInfoList"] == []
                answered = time.monotonic() - opened[0]
            except BotoCoreError:
                time.sleep(0.1)
        observer.wait(range(cap), until=opened[cap - 1] + timeout_s + 1.0)
        not_closed = [i for i in range(cap) if i not in observer.readable]
    finally:
        observer.close()
        close_all(socks)
        kvs.close()
    log = server.output()

    assert answered is not None and answered < timeout_s + 2.0, (answered, attempts)
    assert not refused_late, f"{len(refused_late)} connections past the cap left hanging"
    assert not held_early, f"connections within the cap closed early: {held_early}"
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert not not_closed, f"{len(not_closed)} silent handshakes outlived the deadline"
    assert server.proc.poll() is None
    lines = log.splitlines()
    assert len(lines) < 50, "\n".join(lines[:50])

