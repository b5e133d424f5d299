"""SigV4 on the wire: what boto3 sends and what the KVS producer SDK sends both verify."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json

import pytest
from botocore.exceptions import ClientError
from kvs_media import sign_v4

KEY, SECRET = "AKIAKVSLITETEST", "kvslite-test-secret"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from conftest import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("sig") / "data",
                           "--access-key-id", KEY, "--secret-access-key", SECRET).start()
    yield server
    server.stop()


def code_and_status(excinfo):
    r = excinfo.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def test_boto3_with_the_right_credentials(secured):
    kvs = secured.client("kinesisvideo", key=KEY, secret=SECRET)
    kvs.create_stream(StreamName="signed")
    assert kvs.describe_stream(StreamName="signed")["StreamInfo"]["StreamName"] == "signed"


def test_wrong_secret(secured):
    kvs = secured.client("kinesisvideo", key=KEY, secret="not-the-secret")
    with pytest.raises(ClientError) as e:
        kvs.list_streams()
    assert code_and_status(e) == ("InvalidSignatureException", 403)


def test_unknown_key(secured):
    kvs = secured.client("kinesisvideo", key="AKIAUNKNOWN", secret=SECRET)
    with pytest.raises(ClientError) as e:
        kvs.list_streams()
    assert code_and_status(e) == ("UnrecognizedClientException", 403)


def _sign(method, path, headers, body, *, when, secret=SECRET, region="us-west-2"):
    """Signed by the independent, spec-written signer over the body's hash."""
    return sign_v4(method, path, headers, key=KEY, secret=secret, when=when, region=region,
                   payload_hash=hashlib.sha256(body).hexdigest())


def _send(server, path, headers, body):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("content-length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    return response.status, response.getheader("x-amzn-ErrorType"), response.read()


def producer_sdk_request(server, path, payload, *, when=None, secret=SECRET):
    """What the C producer SDK sends: Host without port, user-agent signed, tabbed JSON."""
    body = json.dumps(payload, indent="\t").encode()
    headers = {"host": "127.0.0.1", "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.5.0"}
    signed = _sign("POST", path, headers, body,
                   when=when or dt.datetime.now(dt.timezone.utc), secret=secret)
    return _send(server, path, {**signed, "content-type": "application/json"}, body)


def test_producer_sdk_style_signature(secured):
    status, code, body = producer_sdk_request(
        secured, "/createStream", {"StreamName": "from-producer", "DataRetentionInHours": 2,
                                   "DeviceName": "kvs-cam", "MediaType": "video/h264"})
    assert (status, code) == (200, None), body
    status, code, body = producer_sdk_request(secured, "/describeStream",
                                              {"StreamName": "from-producer"})
    assert status == 200
    assert json.loads(body)["StreamInfo"]["Status"] == "ACTIVE"


def test_producer_sdk_style_with_wrong_secret(secured):
    status, code, _ = producer_sdk_request(secured, "/describeStream", {"StreamName": "x"},
                                           secret="wrong")
    assert (status, code) == (403, "InvalidSignatureException")


def test_expired_signature(secured):
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20)
    status, code, body = producer_sdk_request(secured, "/listStreams", {}, when=old)
    assert (status, code) == (403, "InvalidSignatureException")
    assert b"Signature expired" in body


def test_small_clock_skew_is_fine(secured):
    skewed = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=4)
    status, code, _ = producer_sdk_request(secured, "/listStreams", {}, when=skewed)
    assert (status, code) == (200, None)


def test_tampered_body(secured):
    body = b'{"StreamName": "from-producer"}'
    headers = _sign("POST", "/describeStream", {"host": "127.0.0.1"}, body,
                    when=dt.datetime.now(dt.timezone.utc))
    status, code, _ = _send(secured, "/describeStream", headers, b'{"StreamName": "other-one"}')
    assert (status, code) == (403, "InvalidSignatureException")


def test_missing_signature(secured):
    status, code, _ = _send(secured, "/listStreams", {"host": "127.0.0.1"}, b"{}")
    assert (status, code) == (403, "MissingAuthenticationTokenException")


def test_anonymous_server_accepts_any_signature(shared_server):
    kvs = shared_server.client("kinesisvideo", key="anything", secret="whatever")
    kvs.list_streams()


def test_producer_sdk_style_put_media_signs_the_empty_payload(secured):
    """PutMedia signs connection/transfer-encoding/x-amzn-* headers and sha256(b'')."""
    from kvs_media import PutMediaConnection
    from kvslite.media import synthetic

    secured.client("kinesisvideo", key=KEY, secret=SECRET).create_stream(
        StreamName="signed-put", DataRetentionInHours=1)
    video = synthetic.encode_video("h264", seconds=1, gop=25)
    headers = {"host": "127.0.0.1", "connection": "keep-alive", "transfer-encoding": "chunked",
               "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.5.0",
               "x-amzn-fragment-acknowledgment-required": "1",
               "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": "1795756324.836",
               "x-amzn-stream-name": "signed-put"}

    def upload(secret):
        signed = _sign("POST", "/putMedia", headers, b"",
                       when=dt.datetime.now(dt.timezone.utc), secret=secret)
        conn = PutMediaConnection(secured.port, None, timecode_type=None, start_timestamp=None,
                                  extra_headers=signed)
        conn.send(synthetic.to_mkv(video, 1795756324836))
        conn.finish()
        acks = conn.all_acks()
        conn.close()
        return conn.status, acks, conn.headers.get("x-amzn-errortype")

    status, acks, _ = upload(SECRET)
    assert status == 200
    assert [a["EventType"] for a in acks] == ["RECEIVED", "PERSISTED"]
    status, acks, code = upload("wrong-secret")
    assert (status, code) == (403, "InvalidSignatureException")


# -- hop-by-hop headers: what a load balancer in HTTP mode does to the producer SDK's ------

def sdk_put_media_head(**changes) -> dict[str, list[str]]:
    """The head of the producer SDK's PutMedia as verify() gets it: signed, then with
    `changes` applied on the way (None: the header was removed)."""
    from kvs_media import EMPTY_SHA256

    headers = {"host": "127.0.0.1", "connection": "keep-alive", "transfer-encoding": "chunked",
               "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.5.0",
               "x-amzn-fragment-acknowledgment-required": "1",
               "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": "1795756324.836",
               "x-amzn-stream-name": "cam"}
    signed = sign_v4("POST", "/putMedia", headers, key=KEY, secret=SECRET,
                     payload_hash=EMPTY_SHA256)
    arrived = {**signed, **changes}
    return {name: [value] for name, value in arrived.items() if value is not None}


def verify_put_media(headers: dict[str, list[str]]) -> None:
    from kvslite.server.edge import sigv4

    sigv4.verify(access_key_id=KEY, secret_access_key=SECRET, method="POST",
                 path="/putMedia", query_string="", headers=headers, body=b"",
                 max_skew_s=900, streaming=True)


@pytest.mark.parametrize("changes", [
    {},
    {"connection": None},  # HAProxy in HTTP mode consumes it
    {"connection": "close"},  # nginx's own, by default
    {"connection": None, "transfer-encoding": None, "content-length": "1234"},  # re-framed
], ids=["as-sent", "connection-dropped", "connection-close", "re-framed"])
def test_signed_hop_by_hop_headers_may_be_changed_by_a_proxy(changes):
    verify_put_media(sdk_put_media_head(**changes))


@pytest.mark.parametrize("changes, message", [
    ({"connection": None, "x-amzn-stream-name": "another-cam"},
     "signature we calculated does not match"),
    ({"connection": None, "x-amzn-fragment-timecode-type": "RELATIVE"},
     "signature we calculated does not match"),
    ({"connection": None, "user-agent": None},
     "Signed headers are missing from the request: user-agent"),
    ({"connection": None, "host": "127.0.0.1:4567"}, "signature we calculated does not match"),
], ids=["stream", "timecode-type", "no-user-agent", "host"])
def test_every_other_signed_header_is_checked_exactly(changes, message):
    from kvslite.server.api_errors import ApiError

    with pytest.raises(ApiError) as e:
        verify_put_media(sdk_put_media_head(**changes))
    assert (e.value.code, e.value.status) == ("InvalidSignatureException", 403)
    assert message in e.value.message


def test_put_media_whose_connection_header_a_proxy_dropped(secured, h264):
    """The producer SDK's PutMedia with its signed `connection` header gone, over HTTP."""
    from kvs_media import persisted_numbers, producer_sdk_put_media
    from kvslite.media import synthetic

    secured.client("kinesisvideo", key=KEY, secret=SECRET).create_stream(
        StreamName="no-connection-header", DataRetentionInHours=1)
    status, code, acks, body = producer_sdk_put_media(
        secured.port, "no-connection-header", synthetic.to_mkv(h264, 1795756324836),
        key=KEY, secret=SECRET, sent={"connection": None})
    assert (status, code) == (200, None), body
    assert len(persisted_numbers(acks)) == 4
