"""The `kinesisvideo` service's signaling-channel operations, one method per operation.

Each method takes its typed request (`kvslite.server.ops.requests`) and returns its typed
result (`kvslite.server.ops.responses`); the edge serializes it. Tags on channel ARNs are
served by KinesisVideo's TagResource family, which hands channel ARNs to `Channels`.
"""

from __future__ import annotations

from kvslite.server.api_errors import invalid
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.ops.kinesisvideo import decode_token, encode_token
from kvslite.server.signaling import SignalingChannel
from kvslite.server.signaling.channels import Channels

DEFAULT_LIST_LIMIT = 10_000


class SignalingChannels:
    def __init__(self, channels: Channels, *, endpoint_url: str):
        self.channels = channels
        self.endpoint_url = endpoint_url

    def operations(self) -> dict:
        return {
            "CreateSignalingChannel": self.create_signaling_channel,
            "DescribeSignalingChannel": self.describe_signaling_channel,
            "ListSignalingChannels": self.list_signaling_channels,
            "UpdateSignalingChannel": self.update_signaling_channel,
            "DeleteSignalingChannel": self.delete_signaling_channel,
            "GetSignalingChannelEndpoint": self.get_signaling_channel_endpoint,
            "DescribeMediaStorageConfiguration": self.describe_media_storage_configuration,
        }

    def create_signaling_channel(self, request: rq.CreateSignalingChannelInput
                                 ) -> rs.CreateSignalingChannelOutput:
        config = request.single_master_configuration
        channel = self.channels.create(
            request.channel_name, channel_type=request.channel_type,
            message_ttl_seconds=config.message_ttl_seconds if config else None,
            tags={tag.key: tag.value for tag in request.tags or ()})
        return {"ChannelARN": channel.arn}

    def describe_signaling_channel(self, request: rq.DescribeSignalingChannelInput
                                   ) -> rs.DescribeSignalingChannelOutput:
        channel = self.channels.resolve(request.channel_name, request.channel_arn)
        return {"ChannelInfo": channel_info(channel)}

    def list_signaling_channels(self, request: rq.ListSignalingChannelsInput
                                ) -> rs.ListSignalingChannelsOutput:
        condition = request.channel_name_condition
        if condition and (condition.comparison_operator or "BEGINS_WITH") != "BEGINS_WITH":
            raise invalid("ChannelNameCondition supports only BEGINS_WITH")
        prefix = (condition.comparison_value if condition else None) or ""
        limit = request.max_results or DEFAULT_LIST_LIMIT
        after = decode_token(request.next_token)
        page = self.channels.list_channels(prefix=prefix, after=after, limit=limit + 1)
        result: rs.ListSignalingChannelsOutput = {
            "ChannelInfoList": [channel_info(c) for c in page[:limit]]}
        if len(page) > limit:
            result["NextToken"] = encode_token(page[limit - 1].name)
        return result

    def update_signaling_channel(self, request: rq.UpdateSignalingChannelInput
                                 ) -> rs.UpdateSignalingChannelOutput:
        channel = self.channels.resolve(arn=request.channel_arn)
        config = request.single_master_configuration
        self.channels.update(channel, request.current_version,
                             message_ttl_seconds=config.message_ttl_seconds if config else None)
        return {}

    def delete_signaling_channel(self, request: rq.DeleteSignalingChannelInput
                                 ) -> rs.DeleteSignalingChannelOutput:
        channel = self.channels.resolve(arn=request.channel_arn)
        self.channels.delete(channel, request.current_version)
        return {}

    def get_signaling_channel_endpoint(self, request: rq.GetSignalingChannelEndpointInput
                                       ) -> rs.GetSignalingChannelEndpointOutput:
        self.channels.resolve(arn=request.channel_arn)
        config = request.single_master_channel_endpoint_configuration
        protocols = (config.protocols if config else None) or ["WSS", "HTTPS"]
        if "WEBRTC" in protocols:
            # AWS's answer while the channel's media storage is not enabled
            raise invalid("The WEBRTC protocol requires media storage to be enabled "
                          "on the channel")
        urls = {"HTTPS": self.endpoint_url, "WSS": websocket_url(self.endpoint_url)}
        return {"ResourceEndpointList": [
            {"Protocol": protocol, "ResourceEndpoint": urls[protocol]}
            for protocol in dict.fromkeys(protocols)]}

    def describe_media_storage_configuration(
            self, request: rq.DescribeMediaStorageConfigurationInput
    ) -> rs.DescribeMediaStorageConfigurationOutput:
        self.channels.resolve(request.channel_name, request.channel_arn)
        # no storage yet; the serializer leaves out the null StreamARN, which clients
        # read as absent
        return {"MediaStorageConfiguration": {"Status": "DISABLED", "StreamARN": None}}


def websocket_url(endpoint_url: str) -> str:
    """The signaling service's URL: the server's own, https -> wss, http -> ws."""
    scheme, rest = endpoint_url.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest


def channel_info(channel: SignalingChannel) -> rs.ChannelInfo:
    return {
        "ChannelName": channel.name,
        "ChannelARN": channel.arn,
        "ChannelType": channel.channel_type,
        "ChannelStatus": channel.status,
        "CreationTime": channel.creation_time,
        "SingleMasterConfiguration": {"MessageTtlSeconds": channel.message_ttl_seconds},
        "Version": channel.version,
    }
