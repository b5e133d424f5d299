"""Least privilege end to end: users made with boto3's iam client, their policies checked on
every request of a real `kvslite serve` (boto3, a signed PutMedia, the signaling WebSocket)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from conftest import REGION, ServerProcess, metric, refusal
from kvs_media import EMPTY_SHA256, PutMediaConnection, sign_v4
from test_signaling_ws import presign
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.slow  # one server for the module

ADMIN = ("AKIDEXAMPLE", "secret")
ACCOUNT = "000000000000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("least") / "data", "--access-key-id",
                           ADMIN[0], "--secret-access-key", ADMIN[1], "--access-log").start()
    kvs = server.client("kinesisvideo")
    server.arns = {name: kvs.create_stream(StreamName=name, DataRetentionInHours=1)["StreamARN"]
                   for name in ("A", "B", "alice")}
    server.channels = {name: kvs.create_signaling_channel(ChannelName=name)["ChannelARN"]
                       for name in ("lobby", "vault")}
    yield server
    server.stop()


def user_with(server, name: str, *statements) -> tuple[str, str]:
    """A new user with one inline policy of these statements; its access key."""
    iam = server.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": list(statements)}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def images(server, key, stream: str) -> list:
    archived = server.client("kinesis-video-archived-media", key=key[0], secret=key[1])
    now = time.time()
    return archived.get_images(StreamName=stream, ImageSelectorType="SERVER_TIMESTAMP",
                               StartTimestamp=now - 10, EndTimestamp=now,
                               SamplingInterval=3000, Format="JPEG")["Images"]


READ_A = {"Effect": "Allow", "Action": ["kinesisvideo:GetImages", "kinesisvideo:ListFragments"],
          "Resource": "arn:aws:kinesisvideo:*:*:stream/A/*"}


def test_a_reader_of_stream_a_reads_a_and_nothing_else(server):
    reader = user_with(server, "reader", READ_A)
    user_arn = f"arn:aws:iam::{ACCOUNT}:user/reader"
    assert len(images(server, reader, "A")) == 4  # a sample every 3 s in 10 s: NO_MEDIA each
    archived = server.client("kinesis-video-archived-media", key=reader[0], secret=reader[1])
    archived.list_fragments(StreamARN=server.arns["A"])
    before = metric(server, "kvslite_access_denied_total", action="kinesisvideo:GetImages")
    now = time.time()
    assert refusal(archived.get_images, StreamName="B", ImageSelectorType="SERVER_TIMESTAMP",
                   StartTimestamp=now - 10, EndTimestamp=now, SamplingInterval=3000,
                   Format="JPEG") == (
        "AccessDeniedException", 403,
        f"User: {user_arn} is not authorized to perform: kinesisvideo:GetImages on "
        f"resource: {server.arns['B']}")
    assert metric(server, "kvslite_access_denied_total",
                  action="kinesisvideo:GetImages") == before + 1
    kvs = server.client("kinesisvideo", key=reader[0], secret=reader[1])
    for stream in ("A", "B"):
        assert refusal(kvs.delete_stream, StreamARN=server.arns[stream]) == (
            "AccessDeniedException", 401,
            f"User: {user_arn} is not authorized to perform: kinesisvideo:DeleteStream on "
            f"resource: {server.arns[stream]}")
    # a stream that does not exist: refused, not reported missing
    assert refusal(kvs.describe_stream, StreamName="nope")[:2] == ("AccessDeniedException", 401)
    admin = server.client("kinesisvideo")
    assert {s["StreamName"] for s in admin.list_streams()["StreamInfoList"]} >= {"A", "B"}
    log = server.output()
    assert re.search(rf"op=DeleteStream stream=\S+ status=401 .* who={re.escape(user_arn)} "
                     r"denied=kinesisvideo:DeleteStream", log)


def test_a_policy_variable_names_the_users_own_stream(server):
    alice = user_with(server, "alice", {
        "Effect": "Allow", "Action": "kinesisvideo:GetImages",
        "Resource": "arn:aws:kinesisvideo:*:*:stream/${aws:username}/*"})
    assert len(images(server, alice, "alice")) == 4
    archived = server.client("kinesis-video-archived-media", key=alice[0], secret=alice[1])
    now = time.time()
    assert refusal(archived.get_images, StreamName="A", ImageSelectorType="SERVER_TIMESTAMP",
                   StartTimestamp=now - 10, EndTimestamp=now, SamplingInterval=3000,
                   Format="JPEG")[:2] == ("AccessDeniedException", 403)


def test_an_explicit_deny_beats_an_allow(server):
    key = user_with(server, "almost", {"Effect": "Allow", "Action": "kinesisvideo:*",
                                       "Resource": "*"},
                    {"Effect": "Deny", "Action": "kinesisvideo:Delete*",
                     "Resource": "arn:aws:kinesisvideo:*:*:stream/B/*"})
    kvs = server.client("kinesisvideo", key=key[0], secret=key[1])
    assert kvs.describe_stream(StreamName="B")["StreamInfo"]["StreamARN"] == server.arns["B"]
    assert refusal(kvs.delete_stream, StreamARN=server.arns["B"])[:2] == \
        ("AccessDeniedException", 401)
    assert kvs.describe_stream(StreamName="B")["StreamInfo"]["Status"] == "ACTIVE"


PLAIN_HTTP_DENIED = {"Effect": "Deny", "Action": "*", "Resource": "*",
                     "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def test_global_condition_keys_apply_a_deny_of_plain_http_and_of_other_addresses(server):
    """AWS supplies aws:SecureTransport and aws:SourceIp on every request; kvslite too
    (test_tls.py: the same policy over HTTPS), so a Deny conditioned on them applies."""
    allow_all = {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}
    key = user_with(server, "tls-only", allow_all, PLAIN_HTTP_DENIED)
    kvs = server.client("kinesisvideo", key=key[0], secret=key[1])
    assert refusal(kvs.list_streams)[:2] == ("AccessDeniedException", 401)
    key = user_with(server, "office", allow_all, {
        "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"StringNotEquals": {"aws:SourceIp": "192.0.2.7"}}})
    kvs = server.client("kinesisvideo", key=key[0], secret=key[1])
    assert refusal(kvs.list_streams)[:2] == ("AccessDeniedException", 401)
    key = user_with(server, "loopback", {**allow_all, "Condition": {
        "StringEquals": {"aws:SourceIp": "127.0.0.1", "aws:SecureTransport": "false"}}})
    kvs = server.client("kinesisvideo", key=key[0], secret=key[1])
    assert len(kvs.list_streams()["StreamInfoList"]) == 3


def test_put_media_to_another_stream_is_refused_before_any_ack(server):
    camera = user_with(server, "camera", {"Effect": "Allow", "Action": "kinesisvideo:PutMedia",
                                          "Resource": "arn:aws:kinesisvideo:*:*:stream/A/*"})
    headers = {"host": f"127.0.0.1:{server.port}", "connection": "keep-alive",
               "transfer-encoding": "chunked", "x-amzn-fragment-acknowledgment-required": "1",
               "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": f"{time.time():.3f}",
               "x-amzn-stream-name": "B"}
    signed = sign_v4("POST", "/putMedia", headers, key=camera[0], secret=camera[1],
                     payload_hash=EMPTY_SHA256, region=REGION)
    conn = PutMediaConnection(server.port, None, timecode_type=None, start_timestamp=None,
                              extra_headers=signed)
    try:
        assert conn.closed.wait(10)  # the whole refusal read
        assert conn.status == 403
        assert conn.headers["x-amzn-errortype"] == "AccessDeniedException"
        assert json.loads(conn.error_body) == {"message": (
            f"User: arn:aws:iam::{ACCOUNT}:user/camera is not authorized to perform: "
            f"kinesisvideo:PutMedia on resource: {server.arns['B']}")}
        assert conn.acks.empty()
    finally:
        conn.close()


def test_connect_as_viewer_on_a_channel_not_allowed_is_refused_before_the_upgrade(server):
    viewer = user_with(server, "viewer", {"Effect": "Allow",
                                          "Action": "kinesisvideo:ConnectAsViewer",
                                          "Resource": "arn:aws:kinesisvideo:*:*:channel/lobby/*"})
    ws = server.endpoint.replace("http", "ws")

    async def connect_to(channel: str):
        url = presign(ws, {"X-Amz-ChannelARN": server.channels[channel],
                           "X-Amz-ClientId": "viewer-1"}, key=viewer[0], secret=viewer[1])
        async with connect(url, open_timeout=10):
            return 101

    assert asyncio.run(connect_to("lobby")) == 101
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(connect_to("vault"))
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert json.loads(response.body) == {"message": (
        f"User: arn:aws:iam::{ACCOUNT}:user/viewer is not authorized to perform: "
        f"kinesisvideo:ConnectAsViewer on resource: {server.channels['vault']}")}
