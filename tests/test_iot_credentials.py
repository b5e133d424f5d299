"""The IoT credential provider end to end: a device certificate from `kvslite iot
issue-cert`, exchanged over mutual TLS (a plain `http.client` with the certificate) for
temporary credentials, which boto3 and a producer-SDK-shaped PutMedia then sign with."""

from __future__ import annotations

import base64
import calendar
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from conftest import REGION, free_port, refusal
from kvs_media import persisted_numbers, producer_sdk_put_media

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # servers, certificates and a TLS listener each

POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "kinesisvideo:*",
    "Resource": "arn:aws:kinesisvideo:*:*:stream/${credentials-iot:ThingName}/*"}]}


def expiry_of(credentials: dict) -> float:
    """The credentials' expiration (UTC, as the provider writes it) in epoch seconds."""
    return calendar.timegm(time.strptime(credentials["expiration"], "%Y-%m-%dT%H:%M:%SZ"))


def kvslite(*args: str, data_dir: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "kvslite", *args, "--data-dir", str(data_dir)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return out.split()


def iot_server(start_server, tmp_path: Path, *extra: str):
    """A server with an IoT port and the role alias `camera`; (server, iot port, CA path)."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    data_dir = tmp_path / "data"
    iot_port = free_port()
    server = start_server("--access-key-id", "AKIDEXAMPLE", "--secret-access-key", "secret",
                          "--iot-port", str(iot_port), "--iot-role-alias", f"camera={policy}",
                          *extra, data_dir=data_dir)
    wait_for_port(iot_port)
    (ca,) = kvslite("iot", "ca", data_dir=data_dir)
    return server, iot_port, Path(ca)


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def get_credentials(port: int, ca: Path, cert: Path | None, key: Path | None, thing: str,
                    alias: str = "camera") -> tuple[int, dict, dict]:
    """GET /role-aliases/<alias>/credentials as a device does: (status, headers, body)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", f"/role-aliases/{alias}/credentials",
                     headers={"x-amzn-iot-thingname": thing})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                json.loads(response.read()))
    finally:
        conn.close()


def session_client(server, credentials: dict, service: str = "kinesisvideo"):
    return boto3.client(service, endpoint_url=server.endpoint, region_name=REGION,
                        aws_access_key_id=credentials["accessKeyId"],
                        aws_secret_access_key=credentials["secretAccessKey"],
                        aws_session_token=credentials["sessionToken"],
                        config=Config(retries={"max_attempts": 1}))


def test_a_device_certificate_buys_credentials_that_upload(start_server, tmp_path):
    server, iot_port, ca = iot_server(start_server, tmp_path)
    cert, key = map(Path, kvslite("iot", "issue-cert", "cam1", "--out", str(tmp_path / "cam1"),
                                  data_dir=tmp_path / "data"))
    server.client("kinesisvideo").create_stream(StreamName="cam1", DataRetentionInHours=1)

    status, _, body = get_credentials(iot_port, ca, cert, key, "cam1")
    assert status == 200
    credentials = body["credentials"]
    assert sorted(credentials) == ["accessKeyId", "expiration", "secretAccessKey",
                                   "sessionToken"]
    assert credentials["accessKeyId"].startswith("ASIA") and len(credentials["accessKeyId"]) == 20
    expires = expiry_of(credentials)
    assert abs(expires - (time.time() + 3600)) < 5  # AWS's default hour

    server.client("kinesisvideo").create_stream(StreamName="cam2", DataRetentionInHours=1)
    kvs = session_client(server, credentials)
    assert kvs.describe_stream(StreamName="cam1")["StreamInfo"]["StreamName"] == "cam1"
    video = synthetic.to_mkv(synthetic.encode_video("h264", seconds=2, gop=25), 1795756324836)

    def put(stream: str):
        return producer_sdk_put_media(
            server.port, stream, video,
            key=credentials["accessKeyId"], secret=credentials["secretAccessKey"],
            signed={"x-amz-security-token": credentials["sessionToken"]})

    status, error, acks, _ = put("cam1")
    assert (status, error) == (200, None)
    assert len(persisted_numbers(acks)) == 2
    # the policy names the device's own stream (${credentials-iot:ThingName}): nothing else
    assert refusal(lambda: kvs.describe_stream(StreamName="cam2"))[:2] == \
        ("AccessDeniedException", 401)
    assert refusal(kvs.list_streams)[:2] == ("AccessDeniedException", 401)
    status, _, acks, _ = put("cam2")
    assert status == 403 and persisted_numbers(acks) == []


def test_forged_and_expired_tokens_are_refused(start_server, tmp_path):
    server, iot_port, ca = iot_server(start_server, tmp_path, "--iot-credential-ttl-s", "2")
    cert, key = map(Path, kvslite("iot", "issue-cert", "cam1", "--out", str(tmp_path / "cam1"),
                                  data_dir=tmp_path / "data"))
    credentials = get_credentials(iot_port, ca, cert, key, "cam1")[2]["credentials"]
    server.client("kinesisvideo").create_stream(StreamName="cam1", DataRetentionInHours=1)
    kvs = session_client(server, credentials)
    kvs.describe_stream(StreamName="cam1")  # the device's own stream, while the token lasts

    token = bytearray(base64.b64decode(credentials["sessionToken"]))
    token[40] ^= 1  # one bit of the sealed payload
    forged = {**credentials, "sessionToken": base64.b64encode(bytes(token)).decode()}
    assert refusal(session_client(server, forged).list_streams)[:2] == \
        ("UnrecognizedClientException", 403)
    other_key = {**credentials, "accessKeyId": "ASIA" + "A" * 16}
    assert refusal(session_client(server, other_key).list_streams)[:2] == \
        ("UnrecognizedClientException", 403)
    wrong_secret = {**credentials, "secretAccessKey": "not-the-secret"}
    assert refusal(session_client(server, wrong_secret).list_streams)[:2] == \
        ("InvalidSignatureException", 403)

    time.sleep(max(0.0, expiry_of(credentials) - time.time()) + 0.2)
    assert refusal(kvs.list_streams)[:2] == ("ExpiredTokenException", 403)
    # the query protocol (STS, IAM) names it as AWS does there
    sts = session_client(server, credentials, service="sts")
    assert refusal(sts.get_caller_identity)[:2] == ("ExpiredToken", 403)


def test_the_thing_must_be_the_certificates_and_the_alias_known(start_server, tmp_path):
    server, iot_port, ca = iot_server(start_server, tmp_path)
    cert, key = map(Path, kvslite("iot", "issue-cert", "cam1", "--out", str(tmp_path / "cam1"),
                                  data_dir=tmp_path / "data"))
    status, headers, body = get_credentials(iot_port, ca, cert, key, "cam2")
    assert (status, headers["x-amzn-errortype"], body) == \
        (403, "ForbiddenException", {"message": "Access Denied"})
    status, headers, body = get_credentials(iot_port, ca, cert, key, "cam1", alias="doorbell")
    assert (status, headers["x-amzn-errortype"], body) == \
        (404, "ResourceNotFoundException", {"message": "Role alias does not exist"})


def test_certificates_of_another_ca_none_or_revoked_end_at_the_handshake(start_server,
                                                                        tmp_path):
    elsewhere = tmp_path / "elsewhere"
    stranger, stranger_key = map(Path, kvslite("iot", "issue-cert", "cam1", "--out",
                                               str(tmp_path / "stranger"), data_dir=elsewhere))
    data_dir = tmp_path / "data"
    cert, key = map(Path, kvslite("iot", "issue-cert", "cam1", "--out", str(tmp_path / "cam1"),
                                  data_dir=data_dir))
    revoked, revoked_key = map(Path, kvslite("iot", "issue-cert", "cam2", "--out",
                                             str(tmp_path / "cam2"), data_dir=data_dir))
    (crl,) = kvslite("iot", "revoke", str(revoked), data_dir=data_dir)
    server, iot_port, ca = iot_server(start_server, tmp_path, "--iot-crl", crl)

    for client_cert, client_key in ((stranger, stranger_key), (None, None),
                                    (revoked, revoked_key)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get_credentials(iot_port, ca, client_cert, client_key,
                            client_cert.name.split(".")[0] if client_cert else "cam1")
    assert get_credentials(iot_port, ca, cert, key, "cam1")[0] == 200
