"""The `kinesis-video-signaling` service's HTTPS API: GetIceServerConfig and
SendAlexaOfferToMaster.

A WebRTC client calls GetIceServerConfig at the HTTPS endpoint GetSignalingChannelEndpoint
returned, before it gathers ICE candidates, and gets the TURN relays (with credentials) it
may use. SendAlexaOfferToMaster is a whole viewer session in one request: the offer goes
to the channel's master over its WebSocket, and the master's answer comes back.
"""

from __future__ import annotations

from kvslite.server.api_errors import RESOURCE_NOT_FOUND, ApiError
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.signaling.alexa import ask_master_from_thread
from kvslite.server.signaling.channels import Channels
from kvslite.server.signaling.hub import Hub
from kvslite.server.signaling.turn import IceServers

ANSWER_TIMEOUT_S = 5.0  # how long SendAlexaOfferToMaster waits for the master's answer


class Signaling:
    def __init__(self, channels: Channels, ice_servers: IceServers, hub: Hub, *,
                 answer_timeout_s: float = ANSWER_TIMEOUT_S):
        self.channels = channels
        self.ice_servers = ice_servers
        self.hub = hub
        self.answer_timeout_s = answer_timeout_s

    def operations(self) -> dict:
        return {"GetIceServerConfig": self.get_ice_server_config,
                "SendAlexaOfferToMaster": self.send_alexa_offer_to_master}

    def get_ice_server_config(self, request: rq.GetIceServerConfigRequest
                              ) -> rs.GetIceServerConfigResponse:
        # the model allows Service "TURN" only, and the edge refuses anything else
        channel = self.channels.resolve(None, request.channel_arn)  # 404 for an unknown one
        # coturn logs the username: it names the client (or the channel) a relay serves
        servers = self.ice_servers.for_client(request.client_id or channel.name)
        return {"IceServerList": [
            {"Uris": list(server.uris), "Username": server.username,
             "Password": server.password, "Ttl": server.ttl_s}
            for server in servers]}

    def send_alexa_offer_to_master(self, request: rq.SendAlexaOfferToMasterRequest
                                   ) -> rs.SendAlexaOfferToMasterResponse:
        """The offer reaches the master as an SDP_OFFER from `SenderClientId` (held while
        no master is connected, as a viewer's is); its SDP_ANSWER to that id is the
        Answer. No answer within the bound is ClientLimitExceededException: of the
        operation's modeled errors it is the one that says "try later" (404 would say the
        channel is gone, and the C SDK creates channels on 404; InvalidArgument would
        blame a request that is fine)."""
        channel = self.channels.resolve(None, request.channel_arn)
        if channel.status == "DELETING":  # as the WebSocket endpoint refuses it
            raise ApiError(RESOURCE_NOT_FOUND,
                           f"The signaling channel {channel.arn} does not exist")
        answer = ask_master_from_thread(
            self.hub, channel.arn, request.sender_client_id, request.message_payload,
            message_ttl_s=channel.message_ttl_seconds, timeout_s=self.answer_timeout_s)
        return {"Answer": answer}
