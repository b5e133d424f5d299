"""Webhook POSTs that no receiver can turn against the server or use to hold it:

- the destination is vetted on the addresses actually connected to: the host is resolved
  once, every address it resolves to must pass the WebhookPolicy (--webhook-allow), and the
  connection goes to a vetted address, so DNS cannot answer differently between the check
  and the connect. TLS still verifies the certificate for the host name (SNI and Host too);
- one deadline covers resolving, connecting, the TLS handshake, sending and the answer:
  every socket wait gets only the time left, so a receiver trickling bytes is cut at it;
- only the status line is read, within MAX_ANSWER_BYTES, then the connection is closed:
  an endless or huge answer costs nothing;
- redirects are never followed. A 3xx, like a refused destination, is a permanent failure;
  other non-2xx answers, timeouts and connection errors may pass, and are retried.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from kvslite.server.delivery.failures import DeliveryError
from kvslite.server.webhook_policy import IPAddress, WebhookPolicy, WebhookTarget

DEADLINE_S = 10.0  # a whole POST, well inside a delivery's claim
MAX_ANSWER_BYTES = 4096  # the status line must come within this much of the answer
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])[ \r\n]")
# getaddrinfo has no timeout of its own: it runs here, and is waited for until the deadline
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kvslite-webhook-dns")


def post_json(uri: str, body: bytes, headers: dict[str, str], policy: WebhookPolicy,
              deadline_s: float = DEADLINE_S) -> int:
    """POST `body` (JSON) to the webhook; its 2xx status, or DeliveryError."""
    deadline = time.monotonic() + deadline_s
    try:
        target = policy.check_uri(uri)  # configured before a rule came, or since changed
    except ValueError as e:
        raise DeliveryError(str(e), permanent=True) from None
    try:
        sock = _connect(target, _vetted_addresses(target, policy, deadline), deadline)
        try:
            _send(sock, target, body, headers, deadline)
            status = _read_status(sock, deadline)
        finally:
            sock.close()
    except TimeoutError:
        raise DeliveryError(f"the webhook took more than {deadline_s:g} s") from None
    except OSError as e:  # refused, reset, TLS (certificate) errors ...
        raise DeliveryError(f"the webhook at {target.host_header} failed: {e}") from None
    if 300 <= status < 400:
        raise DeliveryError(f"the webhook answered {status}, a redirect, which kvslite does "
                            f"not follow: give the final URL", permanent=True)
    if not 200 <= status < 300:
        raise DeliveryError(f"the webhook answered {status}")
    return status


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _vetted_addresses(target: WebhookTarget, policy: WebhookPolicy,
                      deadline: float) -> list[tuple]:
    """(family, sockaddr) for every address the host has, all allowed by the policy."""
    infos: list[tuple]
    if target.literal is not None:
        infos = [(_family(target.literal), (str(target.literal), target.port))]
    else:
        lookup = _resolver.submit(socket.getaddrinfo, target.host, target.port,
                                  type=socket.SOCK_STREAM)
        try:
            infos = [(i[0], i[4]) for i in lookup.result(timeout=_time_left(deadline))]
        except socket.gaierror as e:
            raise DeliveryError(f"cannot resolve the webhook's host {target.host}: "
                                f"{e.strerror}") from None
    for _, sockaddr in infos:
        refused = policy.refusal(target.host, ipaddress.ip_address(sockaddr[0]))
        if refused:
            raise DeliveryError(refused, permanent=True)
    return infos


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _connect(target: WebhookTarget, addresses: list[tuple], deadline: float) -> socket.socket:
    """A connection to the first vetted address that answers, TLS for https."""
    error: OSError = ConnectionError("no address")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_time_left(deadline))
            sock.connect(sockaddr)
            break
        except TimeoutError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            error = e
    else:
        raise error
    if target.scheme == "https":
        context = ssl.create_default_context()  # verifies the certificate and host name
        sock = context.wrap_socket(sock, server_hostname=target.host,
                                   do_handshake_on_connect=False)
        sock.settimeout(_time_left(deadline))  # the handshake's reads share one deadline
        sock.do_handshake()
    return sock


def _send(sock: socket.socket, target: WebhookTarget, body: bytes, headers: dict[str, str],
          deadline: float) -> None:
    head = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}",
            f"Content-Length: {len(body)}", "Connection: close",
            *(f"{name}: {value}" for name, value in headers.items())]
    sock.settimeout(_time_left(deadline))  # sendall's timeout bounds the whole send
    sock.sendall("\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body)


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The answer's status code, from at most MAX_ANSWER_BYTES of it."""
    answer = b""
    while b"\n" not in answer:
        if len(answer) >= MAX_ANSWER_BYTES:
            raise DeliveryError(f"the webhook's answer has no status line in its first "
                                f"{MAX_ANSWER_BYTES} bytes")
        sock.settimeout(_time_left(deadline))
        chunk = sock.recv(MAX_ANSWER_BYTES - len(answer))
        if not chunk:
            raise DeliveryError("the webhook closed the connection without an answer")
        answer += chunk
    match = _STATUS_LINE.match(answer)
    if match is None:
        raise DeliveryError(f"the webhook's answer is not HTTP/1.x: {answer[:80]!r}")
    return int(match.group(1))
