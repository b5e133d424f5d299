"""SendAlexaOfferToMaster's one-shot viewer: an HTTP request that joins the channel as the
viewer `SenderClientId`, sends one SDP_OFFER and waits for the master's SDP_ANSWER.

The offer takes the path any viewer's does (hub.py): to the master, stamped with
`senderClientId`, or held while no master is connected. The master answers it like any
viewer's offer, with `recipientClientId` = SenderClientId, which routes the answer here.
"""

from __future__ import annotations

import asyncio
import functools
import json

import anyio.from_thread

from kvslite.server.api_errors import CLIENT_LIMIT_EXCEEDED, ApiError
from kvslite.server.signaling.hub import VIEWER, Hub


class AnswerPeer:
    """The one-shot viewer's socket: keeps the payload of the first SDP_ANSWER sent to it.
    Anything else (ICE candidates, GO_AWAY) is dropped."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def send(self, text: str) -> None:
        message = json.loads(text)
        if message.get("messageType") == "SDP_ANSWER" and not self.answer.done():
            self.answer.set_result(message.get("messagePayload"))

    async def close(self) -> None:  # ended: a viewer with its ClientId took its place
        if not self.answer.done():
            self.answer.set_result(None)


async def ask_master(hub: Hub, channel_arn: str, sender_client_id: str, offer: str, *,
                     message_ttl_s: float, timeout_s: float) -> str:
    """The messagePayload of the master's SDP_ANSWER to `offer`; ClientLimitExceeded if
    none comes within `timeout_s` (the viewer limit and the payload checks apply too)."""
    peer = AnswerPeer()
    conn = await hub.join(channel_arn, VIEWER, sender_client_id, peer,
                          message_ttl_s=message_ttl_s)
    try:
        await hub.send_from(conn, {"action": "SDP_OFFER", "messagePayload": offer})
        answer = await asyncio.wait_for(peer.answer, timeout_s)
    except TimeoutError:
        answer = None
    finally:
        hub.leave(conn)
        held = hub.forget_held(conn)  # nobody waits for an answer to it any more
    if answer is None:
        raise ApiError(CLIENT_LIMIT_EXCEEDED, (
            "no master is connected to the channel" if held else
            "the master sent no SDP_ANSWER") + f" within {timeout_s:g} s; try later")
    return answer


def ask_master_from_thread(hub: Hub, channel_arn: str, sender_client_id: str, offer: str,
                           *, message_ttl_s: float, timeout_s: float) -> str:
    """`ask_master` for a handler in the server's thread pool (an anyio worker thread):
    it runs on the event loop, where the hub lives."""
    return anyio.from_thread.run(functools.partial(
        ask_master, hub, channel_arn, sender_client_id, offer,
        message_ttl_s=message_ttl_s, timeout_s=timeout_s))
