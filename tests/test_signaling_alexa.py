"""SendAlexaOfferToMaster (kinesis-video-signaling) against a real `kvslite serve`: boto3
sends the offer, a raw `websockets` master gets it as an SDP_OFFER from SenderClientId and
answers over its WebSocket, and boto3 gets that answer back; AWS's errors otherwise."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from botocore.exceptions import ClientError
from test_signaling_ws import SIGNED, create_channel, held_messages, master_url, received, until
from websockets.asyncio.client import connect

OFFER = base64.b64encode(b'{"type":"offer","sdp":"v=0 alexa"}').decode()
ANSWER = base64.b64encode(b'{"type":"answer","sdp":"v=0 master"}').decode()
UNKNOWN_ARN = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/nobody/1700000000000"


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(*SIGNED)


def send_offer(server, arn: str, sender: str = "alexa-1") -> dict:
    client = server.client("kinesis-video-signaling")
    return client.send_alexa_offer_to_master(ChannelARN=arn, SenderClientId=sender,
                                             MessagePayload=OFFER)


def offer_error(server, arn: str, sender: str = "alexa-1") -> tuple[str, int, str]:
    with pytest.raises(ClientError) as e:
        send_offer(server, arn, sender)
    response = e.value.response
    return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
            response["Error"]["Message"])


async def answer_one_offer(master, answer_keys: tuple[str, str, str]) -> dict:
    """Read the offer the master gets and answer it (keys: action, recipient, payload)."""
    offer = await received(master)
    action, recipient, payload = answer_keys
    await master.send(json.dumps({action: "SDP_ANSWER", recipient: offer["senderClientId"],
                                  payload: ANSWER}))
    return offer


def test_the_master_gets_the_offer_and_its_answer_is_returned(server):
    arn = create_channel(server, "doorbell")

    async def scenario():
        async with connect(master_url(server, arn)) as master:
            result, offer = await asyncio.gather(
                asyncio.to_thread(send_offer, server, arn),
                answer_one_offer(master, ("action", "recipientClientId", "messagePayload")))
        assert offer == {"senderClientId": "alexa-1", "messageType": "SDP_OFFER",
                         "messagePayload": OFFER}
        assert result["Answer"] == ANSWER

    asyncio.run(scenario())


def test_a_master_connecting_during_the_wait_gets_the_held_offer(server):
    arn = create_channel(server, "porch")

    async def scenario():
        before = held_messages(server)

        async def late_master() -> dict:  # connects once the offer is held for it
            await until(lambda: held_messages(server) == before + 1, "the offer held")
            async with connect(master_url(server, arn)) as master:
                # the C SDK's capitalised keys
                return await answer_one_offer(master, ("action", "RecipientClientId",
                                                       "MessagePayload"))

        result, offer = await asyncio.gather(
            asyncio.to_thread(send_offer, server, arn, "echo-7"), late_master())
        assert offer["senderClientId"] == "echo-7"
        assert result["Answer"] == ANSWER

    asyncio.run(scenario())


def test_an_unknown_channel_is_not_found(server):
    assert offer_error(server, UNKNOWN_ARN)[:2] == ("ResourceNotFoundException", 404)


@pytest.mark.slow
def test_no_answer_within_five_seconds_is_client_limit_exceeded(server):
    """No master at all, and a master that never answers: both after the 5 s bound."""
    lonely, silent = create_channel(server, "lonely"), create_channel(server, "silent")

    async def scenario():
        async with connect(master_url(server, silent)) as master:
            started = time.monotonic()
            errors = await asyncio.gather(asyncio.to_thread(offer_error, server, lonely),
                                          asyncio.to_thread(offer_error, server, silent))
            elapsed = time.monotonic() - started
            assert (await received(master))["senderClientId"] == "alexa-1"
        return errors, elapsed

    errors, elapsed = asyncio.run(scenario())
    assert errors == [
        ("ClientLimitExceededException", 400,
         "no master is connected to the channel within 5 s; try later"),
        ("ClientLimitExceededException", 400,
         "the master sent no SDP_ANSWER within 5 s; try later")]
    assert 5 <= elapsed < 8  # one bound, no retries
