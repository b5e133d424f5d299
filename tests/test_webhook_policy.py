"""The webhook policy (--webhook-allow) and the webhook client, on their own: which addresses
are internal, how the setting is read, and what a POST does with receivers that misbehave
(real sockets, a receiver started here)."""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
from engines import need
from webhook_receiver import Receiver

from kvslite.server.delivery.failures import DeliveryError
from kvslite.server.delivery.webhooks import MAX_ANSWER_BYTES, post_json
from kvslite.server.webhook_policy import WebhookPolicy, address_class

LOOPBACK = WebhookPolicy.parse("loopback")
BODY = b'{"Type": "Notification"}'
HEADERS = {"Content-Type": "application/json"}


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "private"), ("fd00::1", "private"), ("240.0.0.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    # IPv6 carrying an IPv4 address is judged by it: mapped, 6to4, NAT64, compatible
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "link-local"), ("2002:a00:1::", "private"),
    ("64:ff9b::7f00:1", "loopback"), ("::7f00:1", "loopback"),
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
])
def test_internal_addresses_are_classified(address, kind):
    assert address_class(ipaddress.ip_address(address)) == kind


def test_the_setting_is_read_and_bad_values_are_named():
    policy = WebhookPolicy.parse(" loopback, Private ,10.1.0.0/16,fd00::/8,192.0.2.7,"
                                 "Receiver.LAN.")
    assert policy.classes == {"loopback", "private"}
    assert [str(n) for n in policy.networks] == ["10.1.0.0/16", "fd00::/8", "192.0.2.7/32"]
    assert policy.hosts == {"receiver.lan"}
    assert WebhookPolicy.parse(None) == WebhookPolicy.parse("") == WebhookPolicy()
    for bad in ("lan!", "10.0.0.0/33", "under_score", "-x.example", "http://host"):
        with pytest.raises(ValueError, match=r"--webhook-allow: .* is none of loopback"):
            WebhookPolicy.parse(bad)


def test_the_policy_allows_classes_networks_and_names():
    policy = WebhookPolicy.parse("link-local,10.1.0.0/16,receiver.lan")
    allowed = [("x", "169.254.1.1"), ("x", "10.1.200.3"), ("x", "::ffff:10.1.0.9"),
               ("receiver.lan", "192.168.1.5"), ("x", "8.8.8.8")]
    refused = [("x", "10.2.0.1"), ("x", "127.0.0.1"), ("other.lan", "192.168.1.5"),
               ("x", "224.0.0.1"), ("x", "0.0.0.0")]
    assert [policy.refusal(h, ipaddress.ip_address(a)) for h, a in allowed] == [None] * 5
    for host, address in refused:
        assert "--webhook-allow" in policy.refusal(host, ipaddress.ip_address(address))


@pytest.mark.parametrize("uri, why", [
    ("http://127.0.0.1:9/x", "127.0.0.1 is a loopback address"),
    ("http://127.1/", "127.1 (127.0.0.1) is a loopback address"),
    ("http://2130706433/", "2130706433 (127.0.0.1) is a loopback address"),
    ("http://[::ffff:7f00:1]/", "is a loopback address"),
    ("http://user:pw@example.com/", "must not carry credentials"),
    ("http://token@example.com/", "must not carry credentials"),
    ("ftp://example.com/", "http:// or https:// URL"),
    ("http:///path", "http:// or https:// URL"),
    ("http://example.com:0x50/", "port is not a number"),
    ("http://example.com/a b", "printable ASCII without spaces"),
    ("http://example.com/\r\nX-Injected: 1", "printable ASCII without spaces"),
])
def test_uris_refused_before_any_lookup(uri, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        WebhookPolicy().check_uri(uri)


@pytest.mark.slow
def test_a_receiver_that_trickles_is_cut_at_the_deadline():
    receiver = Receiver("trickle")
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="took more than 1 s") as e:
            post_json(receiver.url(), BODY, HEADERS, LOOPBACK, deadline_s=1.0)
        assert 1.0 <= time.monotonic() - started < 1.5
        assert not e.value.permanent  # the receiver may be better next time
    finally:
        receiver.close()


def test_only_the_status_line_of_a_huge_answer_is_read():
    receiver = Receiver("huge", huge_bytes=1 << 30)
    try:
        assert post_json(receiver.url(), BODY, HEADERS, LOOPBACK, deadline_s=5) == 200
        assert receiver.cut.wait(10)  # closed, not drained: the socket buffers took the rest
        assert receiver.sent < 64 << 20
    finally:
        receiver.close()


def test_redirects_are_permanent_failures_and_not_followed():
    receiver = Receiver("redirect")
    try:
        with pytest.raises(DeliveryError, match="302, a redirect, which kvslite does not "
                                                "follow") as e:
            post_json(receiver.url(), BODY, HEADERS, LOOPBACK)
        assert e.value.permanent
        assert receiver.requests == [("POST", "/hook")]
    finally:
        receiver.close()


def test_host_names_are_checked_on_every_address_they_resolve_to():
    receiver = Receiver()
    try:
        with pytest.raises(DeliveryError, match=r"localhost \(.*\) is a loopback address") as e:
            post_json(receiver.url(host="localhost"), BODY, HEADERS, WebhookPolicy())
        assert e.value.permanent
        assert receiver.requests == []  # refused before connecting
        by_name = WebhookPolicy.parse("localhost")
        assert post_json(receiver.url(host="localhost"), BODY, HEADERS, by_name) == 200
        assert receiver.requests == [("POST", "/hook")]
    finally:
        receiver.close()


def test_an_answer_without_a_status_line_is_a_failure():
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_garbage():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"x" * (MAX_ANSWER_BYTES + 10))
        conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        with pytest.raises(DeliveryError, match="no status line in its first 4096 bytes"):
            post_json(f"http://127.0.0.1:{listener.getsockname()[1]}/", BODY, HEADERS,
                      LOOPBACK)
    finally:
        listener.close()


@pytest.mark.slow
def test_https_connects_to_the_vetted_address_and_verifies_the_host_name(tmp_path,
                                                                          monkeypatch):
    need(shutil.which("openssl") is not None, "the openssl command (to make a certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    receiver = Receiver(tls=(cert, key))
    by_name = WebhookPolicy.parse("localhost,loopback")
    try:
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED") as e:
            post_json(receiver.url(host="localhost", scheme="https"), BODY, HEADERS, by_name)
        assert not e.value.permanent
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it from now on
        assert post_json(receiver.url(host="localhost", scheme="https"), BODY, HEADERS,
                         by_name) == 200
        assert receiver.requests == [("POST", "/hook")]
        # the certificate names localhost, not the address: checked against the Uri's host
        with pytest.raises(DeliveryError, match="IP address mismatch"):
            post_json(receiver.url(scheme="https"), BODY, HEADERS, by_name)
    finally:
        receiver.close()
