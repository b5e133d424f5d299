"""Notifications as an SNS receiver gets them, checked by AWS's own SNS message validator
(the npm package sns-validator, tests/sns_validator/): a real kvslite serving HTTPS with an
openssl certificate, boto3, tagged MKV over PutMedia, and a webhook receiver started here
that hands every POST it gets to the validator. The validator fetches SigningCertURL from
kvslite itself; it is told to trust certificates from kvslite's host:port instead of
sns.<region>.amazonaws.com, and Node to trust the test certificate (NODE_EXTRA_CA_CERTS)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from conftest import REGION
from engines import need
from kvs_media import persisted_numbers, wait_until
from test_event_delivery import NOTIFY, START_MS, tagged_mkv

pytestmark = pytest.mark.slow  # a certificate, a server over TLS and Node per test

VALIDATOR = Path(__file__).parent / "sns_validator"
need(shutil.which("openssl") is not None, "the openssl command (to make a test certificate)")
need(shutil.which("node") is not None and (VALIDATOR / "node_modules/sns-validator").is_dir(),
     "Node.js with tests/sns_validator's packages (npm ci --prefix tests/sns_validator)")

SNS_HEADERS = ("content-type", "x-amz-sns-message-type", "x-amz-sns-message-id",
               "x-amz-sns-topic-arn", "x-amz-sns-subscription-arn")
FIELDS = ["Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp",
          "SignatureVersion", "Signature", "SigningCertURL", "UnsubscribeURL"]


class SnsReceiver:
    """Records (headers, body) of every POST; answers 500 to the first `fail` of them."""

    def __init__(self, fail: int = 0):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()},
                                          body))
                receiver.fail -= 1
                self.send_response(500 if receiver.fail >= 0 else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sns"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = SnsReceiver(fail=1)
    yield receiver
    receiver.close()


def validate(body: bytes, port: int, cert: Path) -> str:
    """What AWS's validator says of the message: "valid" or its error."""
    result = subprocess.run(["node", str(VALIDATOR / "validate.js"), f"127.0.0.1:{port}"],
                            input=body, capture_output=True, timeout=30,
                            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)})
    return result.stdout.decode().strip() or result.stderr.decode()


def put_media_over_tls(port: int, cert: Path, stream: str, data: bytes) -> list[dict]:
    """A whole MKV body in one PutMedia over HTTPS; its acks."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                       context=ssl.create_default_context(cafile=str(cert)))
    try:
        conn.request("POST", "/putMedia", body=data, headers={
            "x-amzn-stream-name": stream, "x-amzn-fragment-timecode-type": "ABSOLUTE",
            "x-amzn-producer-start-timestamp": "1700000000.000",
            "x-amzn-fragment-acknowledgment-required": "1"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        lines = response.read().decode().splitlines()
    finally:
        conn.close()
    return [ack for ack in map(json.loads, filter(str.strip, lines))
            if ack["EventType"] != "IDLE"]


def test_every_notification_passes_the_sns_validator(start_server, certificate, receiver, h264):
    cert, key = certificate
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key),
                          "--webhook-allow", "loopback")
    base = f"https://127.0.0.1:{server.port}"
    kvs = boto3.client("kinesisvideo", endpoint_url=base, region_name=REGION,
                       aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                       verify=str(cert), config=Config(retries={"max_attempts": 1}))
    kvs.create_stream(StreamName="door", DataRetentionInHours=1)
    kvs.update_notification_configuration(StreamName="door", NotificationConfiguration={
        "Status": "ENABLED", "DestinationConfig": {"Uri": receiver.url}})
    acks = put_media_over_tls(server.port, cert, "door",
                              tagged_mkv(h264, START_MS, {1: [NOTIFY], 3: [NOTIFY]}))
    numbers = persisted_numbers(acks)
    # two notifications, the first refused once and sent again
    wait_until(lambda: len(receiver.received) == 3, timeout=30, what="three POSTs")

    stream_arn = kvs.describe_stream(StreamName="door")["StreamInfo"]["StreamARN"]
    topic = "arn:aws:sns:us-east-1:000000000000:kvslite-door-notifications"
    subscription = receiver.received[0][0]["x-amz-sns-subscription-arn"]
    assert subscription.startswith(topic + ":") and uuid.UUID(subscription.split(":")[-1])
    fragments = []
    for headers, body in receiver.received:
        assert validate(body, server.port, cert) == "valid"
        message = json.loads(body)
        assert list(message) == FIELDS
        assert {name: headers[name] for name in SNS_HEADERS} == {
            "content-type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": "Notification",
            "x-amz-sns-message-id": message["MessageId"],
            "x-amz-sns-topic-arn": topic, "x-amz-sns-subscription-arn": subscription}
        assert (message["Type"], message["TopicArn"], message["SignatureVersion"]) == \
            ("Notification", topic, "2")
        assert message["SigningCertURL"] == f"{base}/sns/signing-cert.pem"
        assert message["UnsubscribeURL"] == f"{base}/sns/unsubscribe?SubscriptionArn=" \
                                            f"{subscription}"
        inner = json.loads(message["Message"])
        assert inner["StreamArn"] == stream_arn
        fragments.append(inner["FragmentNumber"])
    # the retry repeats the first message's id (and fragment); each fragment once more
    assert sorted(fragments) == sorted([numbers[1], numbers[1], numbers[3]])
    ids = [json.loads(body)["MessageId"] for _, body in receiver.received]
    assert len(set(ids)) == 2

    body = receiver.received[-1][1]
    for field, value in (("Message", '{"forged": true}'), ("Subject", "Other"),
                         ("TopicArn", topic.replace("door", "gate")), ("Timestamp",
                                                                      "2020-01-01T00:00:00.000Z")):
        tampered = json.dumps({**json.loads(body), field: value}).encode()
        assert validate(tampered, server.port, cert) == "The message signature is invalid.", \
            field
    elsewhere = {**json.loads(body), "SigningCertURL": "https://example.com/cert.pem"}
    assert validate(json.dumps(elsewhere).encode(), server.port, cert) == \
        "The certificate is located on an invalid domain."


def test_the_signing_certificate_is_made_once_and_served_without_signing(start_server,
                                                                         tmp_path):
    data_dir = tmp_path / "data"
    signed = ("--access-key-id", "AKIDEXAMPLE", "--secret-access-key", "secret")
    server = start_server(*signed, data_dir=data_dir)  # SigV4 on the APIs, not on these
    first = fetch(server.port, "/sns/signing-cert.pem")
    assert first[0] == 200 and first[2].startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert first[1]["content-type"] == "application/x-pem-file"
    status, headers, body = fetch(server.port, "/sns/unsubscribe?SubscriptionArn=x")
    assert (status, headers["x-amzn-errortype"]) == (501, "NotImplementedException")
    assert "UpdateNotificationConfiguration" in json.loads(body)["message"]
    server.stop()
    again = start_server(*signed, data_dir=data_dir)  # the same deployment keeps its key
    assert fetch(again.port, "/sns/signing-cert.pem") == first


def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()
                   if k.lower() in ("content-type", "x-amzn-errortype")}
        return response.status, headers, response.read()
    finally:
        conn.close()
