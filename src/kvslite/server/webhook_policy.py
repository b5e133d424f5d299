"""Where kvslite may send webhooks: the Uris it takes and the addresses it connects to.

A notification Uri is chosen by whoever may call UpdateNotificationConfiguration, and the
server POSTs to it from inside the operator's network. So, as self-hosted servers do for
webhooks, kvslite refuses by default every address that is not on the public internet:
loopback, private (RFC 1918, CGNAT, unique-local IPv6 and other non-global ranges),
link-local (169.254.0.0/16 with its cloud metadata services, fe80::/10), multicast and
unspecified. An IPv6 address that embeds an IPv4 one (::ffff:a.b.c.d, 6to4, NAT64) is judged
by the IPv4 address. `--webhook-allow` lets an operator reach their own receivers:

    --webhook-allow loopback,private          whole classes (also: link-local)
    --webhook-allow 10.1.2.0/24,fd00::/8      networks (a bare address is a /32 or /128)
    --webhook-allow receiver.lan              a host name, whatever it resolves to

This module has no I/O: kvslite.server.delivery.webhooks resolves and connects, asking this policy
about every address it would connect to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "--webhook-allow (KVSLITE_WEBHOOK_ALLOW)"
CLASSES = ("loopback", "private", "link-local")  # the classes --webhook-allow can name
_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
_IPV4_IN_IPV6 = (ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated)
                 ipaddress.ip_network("64:ff9b::/96"))  # NAT64
_URI_CHARACTERS = re.compile(r"[!-~]+")  # printable ASCII, no spaces


def address_class(address: IPAddress) -> str | None:
    """What kind of internal address this is, or None for a public (global) one."""
    address = embedded_ipv4(address)
    for name, test in (("unspecified", address.is_unspecified),
                       ("loopback", address.is_loopback),
                       ("link-local", address.is_link_local),
                       ("multicast", address.is_multicast)):
        if test:
            return name
    if address.is_private or address.is_reserved or not address.is_global or (
            address.version == 6 and address.is_site_local):
        return "private"
    return None


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, compatible), else itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    carried = address.ipv4_mapped or address.sixtofour
    if carried is not None:
        return carried
    if int(address) > 1 and any(address in network for network in _IPV4_IN_IPV6):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook Uri taken apart: where to connect and what to ask for."""

    scheme: str  # http | https
    host: str  # a lower-case host name, or an address (IPv6 without brackets)
    port: int
    path: str  # path and query, at least "/"
    literal: IPAddress | None  # the host, when it is an address

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_webhook_uri(uri: str) -> WebhookTarget:
    """The Uri's parts; ValueError, saying why, for one kvslite does not POST to."""
    if not _URI_CHARACTERS.fullmatch(uri):
        raise ValueError("a webhook Uri must be printable ASCII without spaces (percent-encode "
                         "the rest; international host names in their xn-- form)")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook Uri must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("a webhook Uri must not carry credentials (user:password@host); "
                         "give the receiver a secret in the path or query instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("the webhook Uri's port is not a number from 1 to 65535") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname.rstrip(".")
    return WebhookTarget(parts.scheme, host, port, path, _literal_address(host))


def _literal_address(host: str) -> IPAddress | None:
    """The address a host stands for by itself: 127.0.0.1, ::1, and the shorthand forms
    the C resolver also reads as IPv4 (127.1, 0x7f000001, 2130706433)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            pass
    return None


@dataclass(frozen=True)
class WebhookPolicy:
    """The internal destinations an operator allows (none by default)."""

    classes: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, setting: str | None) -> WebhookPolicy:
        """From the comma-separated setting; ValueError naming a value it cannot read."""
        classes, networks, hosts = set(), [], set()
        for item in (setting or "").split(","):
            item = item.strip().lower().rstrip(".")
            if not item:
                continue
            if item in CLASSES:
                classes.add(item)
            elif (network := _network(item)) is not None:
                networks.append(network)
            elif _HOST_NAME.fullmatch(item) and len(item) <= 253:
                hosts.add(item)
            else:
                raise ValueError(f"--webhook-allow: {item!r} is none of {', '.join(CLASSES)}, "
                                 f"a network (10.1.0.0/16, fd00::/8) or a host name")
        return cls(frozenset(classes), tuple(networks), frozenset(hosts))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why a webhook for `host` may not connect to `address`; None if it may."""
        kind = address_class(address)
        if kind is None or host in self.hosts or kind in self.classes:
            return None
        if any(a in network for network in self.networks
               for a in {address, embedded_ipv4(address)} if a.version == network.version):
            return None
        shown = host if str(address) == host else f"{host} ({address})"
        article = "an" if kind[0] in "aeiou" else "a"
        return (f"{shown} is {article} {kind} address; kvslite sends webhooks to loopback, "
                f"private, link-local, multicast and unspecified addresses only where {SETTING} "
                f"allows them (e.g. --webhook-allow {_example(kind, address)})")

    def check_uri(self, uri: str) -> WebhookTarget:
        """What can be checked without resolving: the Uri's form, and its host if it is an
        address. ValueError, saying why, for a Uri refused."""
        target = parse_webhook_uri(uri)
        if target.literal is not None:
            refused = self.refusal(target.host, target.literal)
            if refused:
                raise ValueError(refused)
        return target


def _network(item: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        return None


def _example(kind: str, address: IPAddress) -> str:
    if kind in CLASSES:
        return kind
    return str(ipaddress.ip_network(address))
