"""The signaling hub's routing, holding and limits, on its own (pure asyncio, no server);
and presigned-URL verification against the JS WebRTC SDK's own signing test vector."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from urllib.parse import parse_qsl, urlsplit

import pytest

from kvslite.server.api_errors import ApiError
from kvslite.server.edge import sigv4
from kvslite.server.signaling.hub import GO_AWAY, MASTER, VIEWER, Hub, Limits

ARN = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/cam/1700000000000"

# From the JS SDK's SigV4RequestSigner.spec.ts: AKIA4F7WJQR7FMMWMNXI / FakeSecretKey /
# FakeSessionToken, 2019-12-01T00:00:00Z, us-west-2, one extra parameter.
JS_SDK_VECTOR = (
    "wss://kvs.awsamazon.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
    "AKIA4F7WJQR7FMMWMNXI%2F20191201%2Fus-west-2%2Fkinesisvideo%2Faws4_request"
    "&X-Amz-Date=20191201T000000Z&X-Amz-Expires=299&X-Amz-Security-Token=FakeSessionToken"
    "&X-Amz-Signature=fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92"
    "&X-Amz-SignedHeaders=host&X-Amz-TestParam=test-param-value")
SIGNED_AT = dt.datetime(2019, 12, 1, tzinfo=dt.timezone.utc)


def verify_vector(url: str, *, secret: str = "FakeSecretKey", at_s: float = 60) -> None:
    parts = urlsplit(url)
    sigv4.verify_presigned(
        access_key_id="AKIA4F7WJQR7FMMWMNXI", secret_access_key=secret, path=parts.path,
        query=parse_qsl(parts.query, keep_blank_values=True), host=parts.netloc,
        max_skew_s=900, now=SIGNED_AT + dt.timedelta(seconds=at_s))


def test_the_js_sdk_vector_verifies():
    verify_vector(JS_SDK_VECTOR)


@pytest.mark.parametrize("url, secret, at_s, code, words", [
    (JS_SDK_VECTOR, "WrongSecret", 60, "InvalidSignatureException", "does not match"),
    (JS_SDK_VECTOR.replace("FakeSessionToken", "OtherToken"), "FakeSecretKey", 60,
     "InvalidSignatureException", "does not match"),  # the token is inside the signature
    (JS_SDK_VECTOR, "FakeSecretKey", 300, "InvalidSignatureException", "Signature expired"),
    (JS_SDK_VECTOR, "FakeSecretKey", -901, "InvalidSignatureException",
     "Signature not yet current"),
    (JS_SDK_VECTOR.replace("X-Amz-Signature=fc", "X-Amz-Nothing=fc"), "FakeSecretKey", 60,
     "MissingAuthenticationTokenException", "Missing"),
])
def test_a_presigned_url_is_refused(url, secret, at_s, code, words):
    with pytest.raises(ApiError) as refused:
        verify_vector(url, secret=secret, at_s=at_s)
    assert (refused.value.code, refused.value.status) == (code, 403)
    assert words in refused.value.message


class Socket:
    """A Peer that keeps what it was sent."""

    def __init__(self):
        self.sent: list[dict] = []
        self.closed = False

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self) -> None:
        self.closed = True


def frame(action="SDP_OFFER", payload="b2ZmZXI=", **extra) -> str:
    return json.dumps({"action": action, "messagePayload": payload, **extra})


async def connect(hub: Hub, role: str, client_id: str | None = None, ttl: float = 60):
    peer = Socket()
    return peer, await hub.join(ARN, role, client_id, peer, message_ttl_s=ttl)


def run(coroutine):
    return asyncio.run(coroutine)


def test_viewer_to_master_is_stamped_and_master_to_viewer_is_named():
    async def scenario():
        hub = Hub()
        master, master_conn = await connect(hub, MASTER)
        viewer, viewer_conn = await connect(hub, VIEWER, "viewer-1")
        other, _ = await connect(hub, VIEWER, "viewer-2")
        await hub.receive(viewer_conn, frame(recipientClientId="ignored", extra="x"))
        # the C SDK: pretty-printed, capitalised keys
        await hub.receive(master_conn, json.dumps(
            {"action": "SDP_ANSWER", "RecipientClientId": "viewer-1",
             "MessagePayload": "YW5zd2Vy", "CorrelationId": "c1"}, indent=4))
        assert master.sent == [{"senderClientId": "viewer-1", "messageType": "SDP_OFFER",
                                "messagePayload": "b2ZmZXI="}]
        assert viewer.sent == [{"messageType": "SDP_ANSWER", "messagePayload": "YW5zd2Vy"}]
        assert other.sent == []
    run(scenario())


def test_messages_wait_for_a_master_within_the_ttl_and_are_dropped_after():
    async def scenario():
        hub = Hub()
        _, viewer_conn = await connect(hub, VIEWER, "v", ttl=0.2)
        await hub.receive(viewer_conn, frame(payload="aGVsZA=="))
        master, _ = await connect(hub, MASTER)
        assert [m["messagePayload"] for m in master.sent] == ["aGVsZA=="]
        hub2 = Hub()
        viewer2, late_conn = await connect(hub2, VIEWER, "v", ttl=0.05)
        await hub2.receive(late_conn, frame(correlationId="late"))
        await asyncio.sleep(0.15)
        late_master, _ = await connect(hub2, MASTER)
        assert late_master.sent == []
        assert viewer2.sent == [{"messageType": "STATUS_RESPONSE", "statusResponse": {
            "correlationId": "late", "errorType": "InvalidArgumentException",
            "statusCode": "400", "description": "no master connected within the channel's "
                                                "MessageTtlSeconds", "success": False}}]
    run(scenario())


def test_failures_answer_only_with_a_correlation_id():
    async def scenario():
        hub = Hub(Limits(max_payload_bytes=16))
        master, _ = await connect(hub, MASTER)
        viewer, conn = await connect(hub, VIEWER, "v")
        await hub.receive(conn, frame(payload="x" * 17))  # no correlationId: silence
        await hub.receive(conn, frame(payload="x" * 17, correlationId="big"))
        await hub.receive(conn, "not json")
        await hub.receive(conn, frame(action="NOPE", correlationId="what"))
        assert master.sent == []
        assert [(m["statusResponse"]["correlationId"], m["statusResponse"]["errorType"])
                for m in viewer.sent] == [("big", "InvalidArgumentException"),
                                          ("what", "InvalidArgumentException")]
    run(scenario())


def test_a_flood_is_rate_limited_per_connection():
    async def scenario():
        now = [0.0]
        hub = Hub(clock=lambda: now[0])
        master, _ = await connect(hub, MASTER)
        viewer, conn = await connect(hub, VIEWER, "v")
        for i in range(30):
            await hub.receive(conn, frame(action="ICE_CANDIDATE", correlationId=f"i{i}"))
        for i in range(8):
            await hub.receive(conn, frame(correlationId=f"s{i}"))
        assert len(master.sent) == 20 + 5
        assert {m["statusResponse"]["errorType"] for m in viewer.sent} == {
            "ClientLimitExceededException"}
        assert len(viewer.sent) == 10 + 3
        now[0] += 1.0  # a second later the bucket is full again
        await hub.receive(conn, frame())
        assert len(master.sent) == 26
    run(scenario())


def test_an_eleventh_viewer_is_refused_and_a_reconnecting_one_replaces_itself():
    async def scenario():
        hub = Hub()
        first, _ = await connect(hub, VIEWER, "v0")
        for i in range(1, 10):
            await connect(hub, VIEWER, f"v{i}")
        with pytest.raises(ApiError) as refused:
            hub.admit(ARN, VIEWER, "v10")
        assert refused.value.code == "ClientLimitExceededException"
        hub.admit(ARN, VIEWER, "v0")  # its own place
        again, _ = await connect(hub, VIEWER, "v0")
        assert (first.sent, first.closed) == ([json.loads(GO_AWAY)], True)
        assert not again.closed and len(hub.viewers[ARN]) == 10
    run(scenario())


def test_a_newer_master_replaces_the_old_one():
    async def scenario():
        hub = Hub()
        old, old_conn = await connect(hub, MASTER)
        new, _ = await connect(hub, MASTER)
        _, viewer_conn = await connect(hub, VIEWER, "v")
        hub.leave(old_conn)  # the old socket's own end must not unseat the new master
        await hub.receive(viewer_conn, frame())
        assert (old.sent, old.closed) == ([{"messageType": "GO_AWAY"}], True)
        assert len(new.sent) == 1
    run(scenario())


def test_master_messages_without_recipient_go_to_the_storage_peer():
    async def scenario():
        hub = Hub()
        master, conn = await connect(hub, MASTER)
        await hub.receive(conn, frame(action="SDP_ANSWER", RecipientClientId="",
                                      CorrelationId="s"))
        assert master.sent[0]["statusResponse"]["errorType"] == "InvalidArgumentException"

        class Storage:
            got: list = []

            async def receive(self, channel_arn, message):
                self.got.append((channel_arn, message["action"]))
        hub.storage_peer = Storage()
        await hub.receive(conn, frame(action="SDP_ANSWER"))
        assert Storage.got == [(ARN, "SDP_ANSWER")]
    run(scenario())


def test_lifetime_idle_time_shutdown_and_deletion_end_connections_with_go_away():
    async def scenario():
        now = [0.0]
        hub = Hub(Limits(max_lifetime_s=100, idle_timeout_s=10), clock=lambda: now[0])
        master, conn = await connect(hub, MASTER)
        now[0] = 8
        await hub.receive(conn, frame(action="ICE_CANDIDATE", recipientClientId="gone"))
        assert hub.time_left(conn) == 10
        now[0] = 95
        await hub.receive(conn, frame(action="ICE_CANDIDATE", recipientClientId="gone"))
        assert hub.time_left(conn) == 5  # the lifetime comes first
        viewer, _ = await connect(hub, VIEWER, "v")
        await hub.channel_deleted(ARN)
        assert (master.sent[-1], master.closed) == ({"messageType": "GO_AWAY"}, True)
        assert (viewer.sent, viewer.closed) == ([{"messageType": "GO_AWAY"}], True)
        again, _ = await connect(hub, VIEWER, "v")
        await hub.go_away_all()
        assert (again.sent, again.closed) == ([{"messageType": "GO_AWAY"}], True)
        assert hub.masters == {} and hub.viewers == {}
    run(scenario())
