"""The `kinesis-video-signaling` service's HTTPS API: GetIceServerConfig.

A WebRTC client calls it at the HTTPS endpoint GetSignalingChannelEndpoint returned, before
it gathers ICE candidates, and gets the TURN relays (with credentials) it may use.
"""

from __future__ import annotations

from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.signaling.channels import Channels
from kvslite.server.signaling.turn import IceServers


class Signaling:
    def __init__(self, channels: Channels, ice_servers: IceServers):
        self.channels = channels
        self.ice_servers = ice_servers

    def operations(self) -> dict:
        return {"GetIceServerConfig": self.get_ice_server_config}

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
