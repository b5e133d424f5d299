"""ICE servers for GetIceServerConfig: TURN relays with time-limited credentials.

kvslite runs no relay itself; it hands out credentials for a TURN server beside it (coturn)
in coturn's "TURN REST API" scheme, so the two share only a secret
(`turnserver --use-auth-secret --static-auth-secret=<secret>`):

    username = "<expiry, unix seconds>:<ClientId or channel name>"
    password = base64(HMAC-SHA1(secret, username))

coturn recomputes the password and refuses a username whose expiry has passed.

The WebRTC SDKs take at most 5 servers of at most 4 URIs each, and the C SDK fails on an
empty list, so without TURN configured the list is one STUN server: NAT discovery only,
which is enough on one network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_SERVERS = 5  # IceServerList entries the C SDK takes
MAX_URIS_PER_SERVER = 4  # Uris per entry the C SDK takes
MIN_TTL_S = 31  # the C SDK wants the smallest Ttl above 30 s (it refreshes 30 s early)
MAX_TTL_S = 86_400  # the signaling model's bound on Ttl
DEFAULT_TTL_S = 300
STUN_PORT = 3478  # coturn's (and RFC 5389's) default, where a STUN-only answer points

# RFC 7065: turn:host[:port][?transport=udp|tcp], turns: likewise; IPv6 hosts in brackets
_TURN_URI = re.compile(r"turns?:(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?"
                       r"(\?transport=(udp|tcp))?")


@dataclass(frozen=True)
class IceServer:
    uris: tuple[str, ...]
    username: str
    password: str
    ttl_s: int


def check_turn_settings(uris: Sequence[str], secret: str | None, ttl_s: int) -> None:
    """Refuse a TURN configuration the SDKs or coturn would reject, naming the flag."""
    for uri in uris:
        if not _TURN_URI.fullmatch(uri):
            raise ValueError(f"--turn-uri {uri!r} is not turn:HOST[:PORT][?transport=udp|tcp] "
                             "or turns:...")
    if bool(uris) != bool(secret):
        raise ValueError("set --turn-secret with --turn-uri, or neither")
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"--turn-ttl-s must be between {MIN_TTL_S} and {MAX_TTL_S}")
    if len(group_uris(uris)) > MAX_SERVERS:
        raise ValueError(f"--turn-uri: at most {MAX_SERVERS} TURN hosts of "
                         f"{MAX_URIS_PER_SERVER} URIs each (the WebRTC SDKs take no more)")


def group_uris(uris: Sequence[str]) -> list[tuple[str, ...]]:
    """One IceServerList entry per host, in the order given, split at 4 URIs (AWS too
    answers one entry per relay host, each with its transports)."""
    groups: list[list[str]] = []
    last_host = None
    for uri in uris:
        host = _TURN_URI.fullmatch(uri)["host"]  # type: ignore[index]  # checked at start
        if host != last_host or len(groups[-1]) == MAX_URIS_PER_SERVER:
            groups.append([])
        groups[-1].append(uri)
        last_host = host
    return [tuple(group) for group in groups]


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def stun_uri_for(endpoint_url: str) -> str:
    """The STUN server to name when no TURN is configured: the host clients reach kvslite
    by, on the STUN port, where a coturn beside kvslite answers."""
    host = urlsplit(endpoint_url).hostname or "127.0.0.1"
    return f"stun:{f'[{host}]' if ':' in host else host}:{STUN_PORT}"


class IceServers:
    """The ICE servers one client is given, credentials valid for `ttl_s` from now."""

    def __init__(self, *, turn_uris: Sequence[str], secret: str | None, ttl_s: int,
                 stun_uri: str, clock: Callable[[], float]):
        self._groups = group_uris(turn_uris)
        self._secret = secret  # never logged; it stays in this object
        self.ttl_s = ttl_s
        self.stun_uri = stun_uri
        self._clock = clock

    def __repr__(self) -> str:
        return f"IceServers({len(self._groups)} TURN servers, ttl {self.ttl_s} s)"

    def for_client(self, name: str) -> list[IceServer]:
        if not self._groups or not self._secret:
            # a STUN server needs no credentials; the C SDK still wants an entry and a Ttl
            return [IceServer((self.stun_uri,), "", "", self.ttl_s)]
        username = f"{int(self._clock()) + self.ttl_s}:{name}"
        password = turn_password(self._secret, username)
        return [IceServer(uris, username, password, self.ttl_s) for uris in self._groups]
