"""Test helpers for the media APIs: a raw full-duplex PutMedia client and MKV checks."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import json
import queue
import socket
import threading
import time

import av
import numpy as np

from kvslite.media import mkv


class PutMediaConnection:
    """PutMedia over a raw socket, so a test controls every byte and reads acks live."""

    def __init__(self, port: int, stream: str | None = "", *, timecode_type="ABSOLUTE",
                 start_timestamp: str | None = "1700000000.000", expect_continue=False,
                 extra_headers: dict | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        headers = {"host": f"127.0.0.1:{port}", "transfer-encoding": "chunked",
                   "connection": "keep-alive", "x-amzn-fragment-acknowledgment-required": "1"}
        if stream:
            headers["x-amzn-stream-name"] = stream
        if timecode_type:
            headers["x-amzn-fragment-timecode-type"] = timecode_type
        if start_timestamp:
            headers["x-amzn-producer-start-timestamp"] = start_timestamp
        if expect_continue:
            headers["expect"] = "100-continue"
        headers.update(extra_headers or {})  # a value of None leaves that header out
        headers = {name: value for name, value in headers.items() if value is not None}
        head = "POST /putMedia HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall(head.encode() + b"\r\n")
        self.file = self.sock.makefile("rb")
        self.acks: queue.Queue = queue.Queue()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.error_body = b""
        self.chunks: list[bytes] = []  # the response body's HTTP chunks, as sent
        self.got_continue = False
        self.closed = threading.Event()
        self.started = threading.Event()
        if expect_continue:
            line = self.file.readline()
            self.got_continue = line.startswith(b"HTTP/1.1 100")
            self.file.readline()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def send(self, data: bytes) -> None:
        if data:
            self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def finish(self) -> None:
        try:
            self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may already have closed after an error

    def _read(self) -> None:
        try:
            status_line = self.file.readline()
            self.status = int(status_line.split()[1])
            headers = {}
            while (line := self.file.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            self.headers = headers
            self.started.set()
            if headers.get("transfer-encoding") != "chunked":
                self.error_body = self.file.read(int(headers.get("content-length", 0)))
                return
            pending = b""
            while (size := int(self.file.readline().strip() or b"0", 16)):
                self.chunks.append(self.file.read(size))
                pending += self.chunks[-1]
                self.file.readline()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.acks.put(json.loads(line))
        except (OSError, ValueError):
            pass
        finally:
            self.started.set()
            self.closed.set()

    def next_ack(self, timeout=10.0, skip_idle=True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ack = self.acks.get(timeout=max(0.01, deadline - time.monotonic()))
            if not (skip_idle and ack["EventType"] == "IDLE"):
                return ack

    def wait_for(self, event_type: str, count: int = 1, timeout=15.0) -> list[dict]:
        """Acks read until `count` of `event_type` were seen (or ERROR)."""
        seen, matched = [], 0
        deadline = time.monotonic() + timeout
        while matched < count:
            ack = self.next_ack(max(0.01, deadline - time.monotonic()))
            seen.append(ack)
            if ack["EventType"] == event_type:
                matched += 1
            elif ack["EventType"] == "ERROR":
                break
        return seen

    def all_acks(self, timeout=15.0) -> list[dict]:
        assert self.closed.wait(timeout), "server did not end the PutMedia response"
        out = []
        while not self.acks.empty():
            ack = self.acks.get()
            if ack["EventType"] != "IDLE":
                out.append(ack)
        return out

    def close(self) -> None:
        self.sock.close()


def put_mkv(port: int, stream: str, data: bytes, **kwargs) -> list[dict]:
    """Upload a whole MKV body at once and return every ack."""
    conn = PutMediaConnection(port, stream, **kwargs)
    try:
        conn.send(data)
        conn.finish()
        return conn.all_acks()
    finally:
        conn.close()


def vint(value: int, length: int) -> bytes:
    """`value` as an EBML variable-size integer of exactly `length` bytes: longer than it
    needs is still valid EBML, and what unusual or hostile writers send."""
    return (value | 1 << 7 * length).to_bytes(length, "big")


def demux_packets(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(pts_ms, keyframe, payload) of the video packets FFmpeg finds, in file order."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        scale = float(stream.time_base) * 1000
        return [(round(p.pts * scale), p.is_keyframe, bytes(p))
                for p in container.demux(stream) if p.size]


def mkv_events(data: bytes) -> list:
    reader = mkv.MkvReader()
    return reader.feed(data) + reader.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB (99 when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def wait_until(predicate, timeout=15.0, what="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def persisted_numbers(acks: list[dict]) -> list[str]:
    """The FragmentNumbers of the PERSISTED acks, in order."""
    return [a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"]


def sign_v4(method: str, path: str, headers: dict, *, key: str, secret: str,
            payload_hash: str, when=None, region: str = "us-east-1",
            omit: tuple[str, ...] = ()) -> dict:
    """Headers plus x-amz-date and Authorization, by an independent SigV4 signer written
    from the AWS spec (not botocore's): the canonical request's payload line is
    `payload_hash`; every header is signed except those named in `omit`."""
    when = when or datetime.datetime.now(datetime.UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    headers = {**{k.lower(): v for k, v in headers.items()}, "x-amz-date": amz_date}
    names = sorted(n for n in headers if n not in omit)
    canonical_headers = "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names)
    canonical = "\n".join([method, path, "", canonical_headers, ";".join(names),
                           payload_hash])
    scope = f"{amz_date[:8]}/{region}/kinesisvideo/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = f"AWS4{secret}".encode()
    for part in (amz_date[:8], region, "kinesisvideo", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def producer_sdk_put_media(port: int, stream: str, data: bytes, *, key: str, secret: str,
                           signed: dict | None = None, sent: dict | None = None):
    """PutMedia as the C producer SDK (kvssink 3.5.0) sends it: Host without the port, and
    connection, transfer-encoding, user-agent and its x-amzn-* headers signed over the empty
    payload. `signed` changes what is signed, `sent` what goes on the wire (None: left
    out). Returns (status, x-amzn-ErrorType, acks other than IDLE, error body)."""
    headers = {"host": "127.0.0.1", "connection": "keep-alive", "transfer-encoding": "chunked",
               "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.5.0",
               "x-amzn-fragment-acknowledgment-required": "1",
               "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": "1795756324.836",
               "x-amzn-stream-name": stream, **(signed or {})}
    signed_headers = sign_v4("POST", "/putMedia", headers, key=key, secret=secret,
                             payload_hash=EMPTY_SHA256)
    conn = PutMediaConnection(port, None, timecode_type=None, start_timestamp=None,
                              extra_headers={**signed_headers, **(sent or {})})
    try:
        try:
            conn.send(data)
            conn.finish()
        except OSError:
            pass  # refused before the body went up: the status says why
        acks = conn.all_acks()
        return conn.status, conn.headers.get("x-amzn-errortype"), acks, conn.error_body
    finally:
        conn.close()
