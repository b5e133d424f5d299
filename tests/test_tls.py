"""HTTPS: `kvslite serve --tls-cert/--tls-key` with a self-signed certificate from openssl."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import sys

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import SSLError
from conftest import REGION, free_port
from engines import need

pytestmark = pytest.mark.slow  # a certificate from openssl and a server per test

need(shutil.which("openssl") is not None, "the openssl command (to make a test certificate)")


@pytest.fixture
def tls_server(start_server, certificate):
    cert, key = certificate
    return start_server("--tls-cert", str(cert), "--tls-key", str(key))


def https_client(server, service: str, verify):
    return boto3.client(service, endpoint_url=f"https://127.0.0.1:{server.port}",
                        region_name=REGION, aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="secret", verify=verify,
                        config=Config(retries={"max_attempts": 1}))


def test_boto3_over_https(tls_server, certificate):
    cert, _ = certificate
    kvs = https_client(tls_server, "kinesisvideo", str(cert))
    kvs.create_stream(StreamName="over-tls", DataRetentionInHours=1)
    names = [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]]
    assert names == ["over-tls"]
    endpoint = kvs.get_data_endpoint(StreamName="over-tls", APIName="PUT_MEDIA")["DataEndpoint"]
    assert endpoint == f"https://127.0.0.1:{tls_server.port}"
    # the data plane answers on the endpoint it handed out
    media = boto3.client("kinesis-video-archived-media", endpoint_url=endpoint,
                         region_name=REGION, aws_access_key_id="AKIDEXAMPLE",
                         aws_secret_access_key="secret", verify=str(cert),
                         config=Config(retries={"max_attempts": 1}))
    assert media.list_fragments(StreamName="over-tls")["Fragments"] == []
    # a client that does not trust the certificate cannot talk to it: TLS is real
    untrusting = https_client(tls_server, "kinesisvideo", True)
    with pytest.raises(SSLError):
        untrusting.list_streams()
    for client in (kvs, media, untrusting):
        client.close()  # kept-alive connections would hold up the server's shutdown
    assert "Traceback" not in tls_server.output()


def test_a_policy_that_denies_plain_http_allows_a_user_over_https(start_server, certificate):
    """aws:SecureTransport is "true" over TLS (test_least_privilege.py: "false" without)."""
    cert, key = certificate
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key),
                          "--access-key-id", "AKIDEXAMPLE", "--secret-access-key", "secret")
    iam = https_client(server, "iam", str(cert))
    iam.create_user(UserName="tls-only")
    iam.put_user_policy(UserName="tls-only", PolicyName="tls", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "kinesisvideo:ListStreams", "Resource": "*"},
            {"Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    user_key = iam.create_access_key(UserName="tls-only")["AccessKey"]
    kvs = boto3.client("kinesisvideo", endpoint_url=f"https://127.0.0.1:{server.port}",
                       region_name=REGION, aws_access_key_id=user_key["AccessKeyId"],
                       aws_secret_access_key=user_key["SecretAccessKey"], verify=str(cert),
                       config=Config(retries={"max_attempts": 1}))
    assert kvs.list_streams()["StreamInfoList"] == []
    for client in (iam, kvs):
        client.close()


def test_plain_http_to_the_tls_port_gets_no_api_answer(tls_server, certificate):
    conn = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=10)
    try:
        conn.request("POST", "/listStreams", body=b"{}",
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException):
        status, body = None, b""  # the connection is dropped: the expected outcome
    finally:
        conn.close()
    assert status != 200 and b"StreamInfoList" not in body
    # and HTTPS still works afterwards
    context = ssl.create_default_context(cafile=str(certificate[0]))
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, timeout=10,
                                       context=context)
    try:
        conn.request("POST", "/listStreams", body=b"{}")
        response = conn.getresponse()
        assert response.status == 200 and b"StreamInfoList" in response.read()
        assert response.getheader("x-content-type-options") == "nosniff"
    finally:
        conn.close()
    assert "Traceback" not in tls_server.output()


@pytest.mark.parametrize("given", ["cert", "key"])
def test_half_a_tls_configuration_is_refused(tmp_path, certificate, given):
    cert, key = certificate
    flag, path = ("--tls-cert", cert) if given == "cert" else ("--tls-key", key)
    result = subprocess.run(
        [sys.executable, "-m", "kvslite", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "data"), flag, str(path)],
        check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "set both --tls-cert and --tls-key" in output, output
    assert "Traceback" not in output
