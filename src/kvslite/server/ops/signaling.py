"""The `kinesis-video-signaling` service's HTTPS API: GetIceServerConfig.

A WebRTC client calls it at the HTTPS endpoint GetSignalingChannelEndpoint returned, before
it gathers ICE candidates, and gets the TURN relays (with credentials) it may use.
"""

from __future__ import annotations

from typing import Protocol

from kvslite.server.api_errors import not_found
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.signaling.turn import IceServers


class ChannelRecord(Protocol):
    name: str


class ChannelLookup(Protocol):
    """kvslite.server.signaling.channels.Channels, as far as this module needs it."""

    def resolve(self, name: str | None, arn: str | None) -> ChannelRecord: ...


class NoChannels:
    """The lookup to use while kvslite stores no signaling channels: every ARN is unknown."""

    def resolve(self, name: str | None, arn: str | None) -> ChannelRecord:
        raise not_found(f"The signaling channel {arn or name} does not exist")


class Signaling:
    def __init__(self, channels: ChannelLookup, ice_servers: IceServers):
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
