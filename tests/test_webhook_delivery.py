"""Webhook destinations end to end: a real server, boto3, tagged MKV over PutMedia and a
receiver started here. Internal addresses are refused unless --webhook-allow says otherwise,
host names are checked on what they resolve to, redirects are not followed, a trickling
receiver is cut at the deadline and a huge answer costs the server no memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import metric, refusal
from kvs_media import put_mkv, wait_until
from test_event_delivery import NOTIFY, START_MS, tagged_mkv
from webhook_receiver import Receiver

from kvslite.server.delivery.deliverer import WEBHOOK_DEADLINE_S

pytestmark = pytest.mark.slow  # a server and a receiver per test

INTERNAL = ["http://127.0.0.1:8080/hook", "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook",
            "http://0.0.0.0:4567/", "http://224.0.0.1/hook", "http://[::ffff:127.0.0.1]/",
            "http://[fe80::1]/", "http://192.168.1.10:9200/_shutdown"]
ALLOW_ALL_INTERNAL = "loopback,private,link-local,0.0.0.0/32,224.0.0.0/4"


def notify_to(kvs, stream: str, uri: str) -> None:
    kvs.update_notification_configuration(StreamName=stream, NotificationConfiguration={
        "Status": "ENABLED", "DestinationConfig": {"Uri": uri}})


def delivered(server) -> int:
    return int(metric(server, "kvslite_deliveries_total", kind="notification",
                      result="delivered"))


def test_internal_addresses_are_refused_unless_allowed(start_server):
    kvs = start_server().client("kinesisvideo")
    kvs.create_stream(StreamName="ssrf", DataRetentionInHours=1)
    for uri in INTERNAL:
        code, _, message = refusal(lambda: notify_to(kvs, "ssrf", uri))
        assert code == "InvalidArgumentException", uri
        assert "--webhook-allow" in message, (uri, message)
    for uri, why in (("http://user:pw@example.com/hook", "must not carry credentials"),
                     ("ftp://example.com/hook", "http:// or https://")):
        code, _, message = refusal(lambda: notify_to(kvs, "ssrf", uri))
        assert code == "InvalidArgumentException"
        assert message.startswith(f"DestinationConfig.Uri {uri!r}: a webhook Uri ") and \
            why in message, message
    assert "NotificationConfiguration" not in \
        kvs.describe_notification_configuration(StreamName="ssrf")
    notify_to(kvs, "ssrf", "https://hooks.example.com/kvs")  # public names are fine
    notify_to(kvs, "ssrf", "http://localhost:9/kvs")  # checked when delivering

    allowing = start_server("--webhook-allow", ALLOW_ALL_INTERNAL).client("kinesisvideo")
    allowing.create_stream(StreamName="ssrf", DataRetentionInHours=1)
    for uri in INTERNAL:
        notify_to(allowing, "ssrf", uri)
        assert allowing.describe_notification_configuration(StreamName="ssrf")[
            "NotificationConfiguration"]["DestinationConfig"]["Uri"] == uri


def test_an_allowed_loopback_receiver_gets_its_notification(start_server, h264):
    receiver = Receiver()
    try:
        server = start_server("--webhook-allow", "loopback")
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="allowed", DataRetentionInHours=1)
        notify_to(kvs, "allowed", receiver.url())
        put_mkv(server.port, "allowed", tagged_mkv(h264, START_MS, {1: [NOTIFY]}))
        wait_until(lambda: delivered(server) == 1, what="the notification delivered")
        assert receiver.requests == [("POST", "/hook")]
    finally:
        receiver.close()


def test_a_name_resolving_to_loopback_is_refused_when_delivering(start_server, h264):
    receiver = Receiver()
    try:
        server = start_server()
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="rebind", DataRetentionInHours=1)
        notify_to(kvs, "rebind", receiver.url(host="localhost"))  # a name: accepted here
        put_mkv(server.port, "rebind", tagged_mkv(h264, START_MS, {1: [NOTIFY]}))
        wait_until(lambda: "localhost (" in server.output() and
                   "is a loopback address" in server.output(), what="the refusal logged")
        assert receiver.requests == []
        assert delivered(server) == 0
    finally:
        receiver.close()


def test_redirects_are_not_followed(start_server, h264):
    receiver = Receiver("redirect")  # 302 to /internal on the same receiver
    try:
        server = start_server("--webhook-allow", "loopback")
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="redirected", DataRetentionInHours=1)
        notify_to(kvs, "redirected", receiver.url())
        put_mkv(server.port, "redirected", tagged_mkv(h264, START_MS, {1: [NOTIFY]}))
        wait_until(lambda: "302, a redirect, which kvslite does not follow" in server.output(),
                   what="the redirect refused")
        assert ("GET", "/internal") not in receiver.requests
        assert set(receiver.requests) == {("POST", "/hook")}
    finally:
        receiver.close()


def test_a_trickling_receiver_is_cut_at_the_deadline(start_server, h264):
    receiver = Receiver("trickle")  # 5 bytes a second of a status line that never ends
    try:
        server = start_server("--webhook-allow", "loopback")
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="trickle", DataRetentionInHours=1)
        notify_to(kvs, "trickle", receiver.url())
        put_mkv(server.port, "trickle", tagged_mkv(h264, START_MS, {1: [NOTIFY]}))
        assert receiver.cut.wait(WEBHOOK_DEADLINE_S + 10), "the server kept reading"
        # cut within the deadline (the receiver notices at its next byte, 0.2 s later)
        assert receiver.held_s <= WEBHOOK_DEADLINE_S + 0.5
    finally:
        receiver.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_huge_answer_does_not_grow_the_server(start_server, h264):
    receiver = Receiver("huge", huge_bytes=256 << 20)
    try:
        server = start_server("--webhook-allow", "loopback")
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="huge", DataRetentionInHours=1)
        notify_to(kvs, "huge", receiver.url())
        put_mkv(server.port, "huge", tagged_mkv(h264, START_MS, {}))  # warm up, no event
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # peak RSS := RSS now
        before = peak_rss_mb(server.proc.pid)
        put_mkv(server.port, "huge", tagged_mkv(h264, START_MS + 10_000, {1: [NOTIFY]}))
        wait_until(lambda: delivered(server) == 1, timeout=60, what="the delivery")
        assert receiver.done.wait(30)
        growth = peak_rss_mb(server.proc.pid) - before
        assert growth <= 64, f"peak RSS grew by {growth:.0f} MB"
        assert receiver.cut.is_set() and receiver.sent < 64 << 20  # not drained either
    finally:
        receiver.close()


def test_a_bad_setting_stops_the_server_at_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kvslite", "serve", "--data-dir", str(tmp_path),
         "--webhook-allow", "loopback,lan!"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "KVSLITE_WEBHOOK_ALLOW": ""})
    assert result.returncode == 2
    assert "--webhook-allow: 'lan!' is none of loopback, private, link-local" in result.stderr
