"""The WebRTC signaling WebSocket against a real `kvslite serve`, with the `websockets`
client and URLs presigned as the JS SDK presigns them (SigV4 query auth, the token inside
the signed query): routing, holding, refusals before the upgrade, limits, GO_AWAY."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import ssl
import time
import urllib.request
from urllib.parse import quote, urlsplit

import boto3
import pytest
from conftest import REGION, metric
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

KEY, SECRET = "AKIDEXAMPLE", "secret"
SIGNED = ("--access-key-id", KEY, "--secret-access-key", SECRET)


def presign(endpoint: str, params: dict, *, key: str = KEY, secret: str = SECRET,
            region: str = REGION, when: dt.datetime | None = None, expires: int = 299,
            token: str | None = None) -> str:
    """`endpoint?params` signed like the JS SDK's SigV4RequestSigner (checked against its
    test vector below)."""
    when = when or dt.datetime.now(dt.timezone.utc)
    date, stamp = when.strftime("%Y%m%d"), when.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{date}/{region}/kinesisvideo/aws4_request"
    query = {**params, "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
             "X-Amz-Credential": f"{key}/{scope}", "X-Amz-Date": stamp,
             "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host"}
    if token:
        query["X-Amz-Security-Token"] = token
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                               for k, v in sorted(query.items()))
    parts = urlsplit(endpoint)
    path = parts.path or "/"
    canonical = "\n".join(["GET", path, canonical_query, f"host:{parts.netloc}\n", "host",
                           hashlib.sha256(b"").hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = f"AWS4{secret}".encode()
    for part in (date, region, "kinesisvideo", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{parts.scheme}://{parts.netloc}{path}?{canonical_query}&X-Amz-Signature={signature}"


def test_the_presign_helper_reproduces_the_js_sdk_vector():
    url = presign("wss://kvs.awsamazon.com", {"X-Amz-TestParam": "test-param-value"},
                  key="AKIA4F7WJQR7FMMWMNXI", secret="FakeSecretKey", region="us-west-2",
                  when=dt.datetime(2019, 12, 1, tzinfo=dt.timezone.utc),
                  token="FakeSessionToken")
    assert "X-Amz-Signature=fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92" in url


def ws_url(server, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}"


def create_channel(server, name: str, ttl: int = 60) -> str:
    kvs = server.client("kinesisvideo", key=KEY, secret=SECRET)
    return kvs.create_signaling_channel(
        ChannelName=name, SingleMasterConfiguration={"MessageTtlSeconds": ttl})["ChannelARN"]


def master_url(server, arn: str, **kw) -> str:
    return presign(ws_url(server, kw.pop("scheme", "ws")), {"X-Amz-ChannelARN": arn}, **kw)


def viewer_url(server, arn: str, client_id: str, **kw) -> str:
    return presign(ws_url(server, kw.pop("scheme", "ws")),
                   {"X-Amz-ChannelARN": arn, "X-Amz-ClientId": client_id}, **kw)


async def received(socket, timeout: float = 5) -> dict:
    return json.loads(await asyncio.wait_for(socket.recv(), timeout))


def offer(payload: str = "b2ZmZXI=", **extra) -> str:
    return json.dumps({"action": "SDP_OFFER", "messagePayload": payload, **extra})


async def refusal(url: str, **kw) -> tuple[int, str, dict]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=5, **kw):
            pass
    response = refused.value.response
    return (response.status_code, response.headers.get("x-amzn-ErrorType"),
            json.loads(response.body))


def logged(server, text: str, count: int) -> str:
    """The server's log once `text` appears `count` times in it (an upgrade's access-log
    line is written when its connection ends)."""
    deadline = time.monotonic() + 5
    while (log := server.output()).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.count(text) == count, log
    return log


def held_messages(server) -> float:
    """How many messages the server has held for an absent master so far (/metrics)."""
    return metric(server, "kvslite_signaling_messages_total", result="held")


async def until(condition, what: str, timeout: float = 5) -> None:
    """Wait (without blocking the event loop) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
def signed_server(start_server):
    return start_server(*SIGNED, "--access-log")


def test_viewer_to_master_and_back_in_both_sdks_key_casings(signed_server):
    arn = create_channel(signed_server, "cam")

    async def scenario():
        async with connect(master_url(signed_server, arn)) as master, \
                connect(viewer_url(signed_server, arn, "viewer-1")) as viewer:
            await viewer.send(offer(recipientClientId="ignored", unknown="x"))
            assert await received(master) == {"senderClientId": "viewer-1",
                                              "messageType": "SDP_OFFER",
                                              "messagePayload": "b2ZmZXI="}
            # the C SDK: pretty-printed JSON, capitalised keys
            await master.send(json.dumps({"action": "SDP_ANSWER",
                                          "RecipientClientId": "viewer-1",
                                          "MessagePayload": "YW5zd2Vy",
                                          "CorrelationId": "c-1"}, indent=4))
            assert await received(viewer) == {"messageType": "SDP_ANSWER",
                                              "messagePayload": "YW5zd2Vy"}
            # the C SDK's answer to the storage session: nobody to take it, so it asked
            await master.send(json.dumps({"action": "SDP_ANSWER", "RecipientClientId": "",
                                          "MessagePayload": "YQ==", "CorrelationId": "s"}))
            status = (await received(master))["statusResponse"]
            assert (status["correlationId"], status["errorType"], status["statusCode"],
                    status["success"]) == ("s", "InvalidArgumentException", "400", False)
    asyncio.run(scenario())
    log = logged(signed_server, "status=101", 2)
    assert log.count("op=ConnectAsMaster") == 1 and log.count("op=ConnectAsViewer") == 1


def test_a_message_waits_for_a_late_master_within_the_ttl(signed_server):
    arn = create_channel(signed_server, "late", ttl=5)

    async def scenario():
        before = held_messages(signed_server)
        async with connect(viewer_url(signed_server, arn, "v")) as viewer:
            await viewer.send(offer("aGVsZA=="))
            await until(lambda: held_messages(signed_server) == before + 1, "the offer held")
            async with connect(master_url(signed_server, arn)) as master:
                assert (await received(master))["messagePayload"] == "aGVsZA=="
    asyncio.run(scenario())


@pytest.mark.slow
def test_a_message_for_no_master_is_dropped_after_the_ttl(signed_server):
    arn = create_channel(signed_server, "expired", ttl=5)

    async def scenario():
        async with connect(viewer_url(signed_server, arn, "v")) as viewer:
            started = time.monotonic()
            await viewer.send(offer(correlationId="gone"))
            status = (await received(viewer, timeout=15))["statusResponse"]
            assert time.monotonic() - started >= 5  # the channel's MessageTtlSeconds
            assert status["correlationId"] == "gone" and status["statusCode"] == "400"
            async with connect(master_url(signed_server, arn)) as master:
                await master.send(json.dumps({"action": "ICE_CANDIDATE",
                                              "recipientClientId": "v",
                                              "messagePayload": "aWNl"}))
                assert (await received(viewer))["messagePayload"] == "aWNl"
                with pytest.raises(TimeoutError):
                    await received(master, timeout=0.5)  # the offer was dropped
    asyncio.run(scenario())


def test_upgrades_are_refused_before_upgrading(signed_server):
    arn = create_channel(signed_server, "guarded")
    unknown = arn.replace("channel/guarded/", "channel/missing/")
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=600)

    async def scenario():
        unsigned = f"{ws_url(signed_server)}/?X-Amz-ChannelARN={quote(arn, safe='')}"
        return [
            await refusal(unsigned),
            await refusal(master_url(signed_server, arn, secret="wrong")),
            await refusal(master_url(signed_server, arn, when=old)),
            await refusal(viewer_url(signed_server, arn, "AWS_v")),
            await refusal(master_url(signed_server, unknown)),
        ]
    answers = asyncio.run(scenario())
    assert [(status, code) for status, code, _ in answers] == [
        (403, "MissingAuthenticationTokenException"),
        (403, "InvalidSignatureException"),
        (403, "InvalidSignatureException"),
        (400, "InvalidArgumentException"),
        (404, "ResourceNotFoundException"),
    ]
    assert "Signature expired" in answers[2][2]["message"]
    assert logged(signed_server, "status=404", 1).count("status=403") == 3
    text = urllib.request.urlopen(f"{signed_server.endpoint}/metrics", timeout=5).read().decode()
    assert 'kvslite_signaling_refusals_total{code="InvalidSignatureException"} 2.0' in text


def test_an_eleventh_viewer_is_refused_and_a_reconnecting_one_replaces_itself(signed_server):
    arn = create_channel(signed_server, "crowded")

    async def scenario():
        viewers = [await connect(viewer_url(signed_server, arn, f"v{i}")) for i in range(10)]
        try:
            status, code, body = await refusal(viewer_url(signed_server, arn, "v10"))
            assert (status, code) == (400, "ClientLimitExceededException")
            async with connect(viewer_url(signed_server, arn, "v0")) as again, \
                    connect(master_url(signed_server, arn)) as master:
                assert await received(viewers[0]) == {"messageType": "GO_AWAY"}
                await master.send(json.dumps({"action": "ICE_CANDIDATE",
                                              "recipientClientId": "v0",
                                              "messagePayload": "aWNl"}))
                assert (await received(again))["messagePayload"] == "aWNl"
        finally:
            for viewer in viewers:
                await viewer.close()
    asyncio.run(scenario())


def test_oversized_payloads_answer_and_deliver_nothing(signed_server):
    arn = create_channel(signed_server, "big")

    async def scenario():
        async with connect(master_url(signed_server, arn)) as master, \
                connect(viewer_url(signed_server, arn, "v")) as viewer:
            await viewer.send(offer("A" * 10_241, correlationId="too-big"))
            status = (await received(viewer))["statusResponse"]
            assert (status["correlationId"], status["errorType"]) == (
                "too-big", "InvalidArgumentException")
            await viewer.send(offer("A" * 10_240))
            assert len((await received(master))["messagePayload"]) == 10_240  # the next one
    asyncio.run(scenario())


def test_a_flood_is_rate_limited(start_server):
    server = start_server(*SIGNED, "--signaling-ice-per-s", "0.01")
    arn = create_channel(server, "flood")

    async def scenario():
        async with connect(master_url(server, arn)) as master, \
                connect(viewer_url(server, arn, "v")) as viewer:
            for i in range(30):
                await viewer.send(json.dumps({"action": "ICE_CANDIDATE",
                                              "messagePayload": "aWNl",
                                              "correlationId": f"c{i}"}))
            refusals = [await received(viewer) for _ in range(29)]
            assert {r["statusResponse"]["errorType"] for r in refusals} == {
                "ClientLimitExceededException"}
            assert (await received(master))["messageType"] == "ICE_CANDIDATE"
            with pytest.raises(TimeoutError):
                await received(master, timeout=0.3)  # one of thirty went through
    asyncio.run(scenario())


def test_a_newer_master_replaces_the_old_one(signed_server):
    arn = create_channel(signed_server, "twice")

    async def scenario():
        async with connect(master_url(signed_server, arn)) as old:
            async with connect(master_url(signed_server, arn)) as new, \
                    connect(viewer_url(signed_server, arn, "v")) as viewer:
                assert await received(old) == {"messageType": "GO_AWAY"}
                with pytest.raises(ConnectionClosed):
                    await received(old)
                await viewer.send(offer())
                assert (await received(new))["senderClientId"] == "v"
    asyncio.run(scenario())


def test_idle_sockets_outlive_the_header_deadline_and_count_against_max_connections(
        start_server):
    server = start_server(*SIGNED, "--max-connections", "200", "--header-timeout-s", "1")
    arns = [create_channel(server, f"idle{i}") for i in range(20)]
    one_more = create_channel(server, "one-more")

    async def scenario():
        sockets = []
        for arn in arns:
            sockets.append(await connect(master_url(server, arn)))
            sockets += [await connect(viewer_url(server, arn, f"v{i}")) for i in range(9)]
        try:
            with pytest.raises(InvalidStatus) as refused:
                await connect(master_url(server, one_more))
            assert refused.value.response.status_code == 503
            await asyncio.sleep(1.5)  # past the request-head deadline
            await sockets[1].send(offer())
            assert (await received(sockets[0]))["senderClientId"] == "v0"
        finally:
            await asyncio.gather(*(s.close() for s in sockets))
    asyncio.run(scenario())


def test_go_away_to_every_socket_on_shutdown(signed_server):
    arn = create_channel(signed_server, "bye")

    async def scenario():
        async with connect(master_url(signed_server, arn)) as master, \
                connect(viewer_url(signed_server, arn, "v")) as viewer:
            stopping = asyncio.get_running_loop().run_in_executor(None, signed_server.stop)
            assert await received(master) == {"messageType": "GO_AWAY"}
            assert await received(viewer) == {"messageType": "GO_AWAY"}
            assert await stopping == 0
    asyncio.run(scenario())


@pytest.mark.slow
def test_over_tls_and_anonymous(start_server, certificate):
    cert, key = certificate
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    kvs = boto3.client("kinesisvideo", endpoint_url=f"https://127.0.0.1:{server.port}",
                       region_name=REGION, aws_access_key_id=KEY,
                       aws_secret_access_key=SECRET, verify=str(cert))
    arn = kvs.create_signaling_channel(ChannelName="secure")["ChannelARN"]
    kvs.close()
    context = ssl.create_default_context(cafile=str(cert))

    async def scenario():
        unsigned = f"wss://127.0.0.1:{server.port}/?X-Amz-ChannelARN={quote(arn, safe='')}"
        async with connect(unsigned, ssl=context) as master, \
                connect(unsigned + "&X-Amz-ClientId=v", ssl=context) as viewer:
            assert master.response.headers.get("Sec-WebSocket-Protocol") is None
            await viewer.send(offer())
            assert (await received(master))["senderClientId"] == "v"
    asyncio.run(scenario())


def test_deleting_the_channel_sends_go_away(signed_server):
    arn = create_channel(signed_server, "doomed")
    kvs = signed_server.client("kinesisvideo", key=KEY, secret=SECRET)

    async def scenario():
        async with connect(master_url(signed_server, arn)) as master, \
                connect(viewer_url(signed_server, arn, "v")) as viewer:
            await asyncio.to_thread(kvs.delete_signaling_channel, ChannelARN=arn)
            assert await received(master) == {"messageType": "GO_AWAY"}
            assert await received(viewer) == {"messageType": "GO_AWAY"}
        status, code, _ = await refusal(master_url(signed_server, arn))
        assert (status, code) == (404, "ResourceNotFoundException")
    asyncio.run(scenario())
