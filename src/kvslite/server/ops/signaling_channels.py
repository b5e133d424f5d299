"""The `kinesisvideo` service's signaling-channel operations, one method per operation.

Each method takes its typed request (`kvslite.server.ops.requests`) and returns its typed
result (`kvslite.server.ops.responses`); the edge serializes it. Tags on channel ARNs are
served by KinesisVideo's TagResource family, which hands channel ARNs to `Channels`.

Media storage maps a channel to a stream; the stream's side of the rules (it exists, it
keeps data) is checked here, where both the archive's streams and the channels are at
hand, since the signaling layer does not import the archive.
"""

from __future__ import annotations

from kvslite.server.api_errors import NO_DATA_RETENTION, ApiError, invalid
from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.ops.kinesisvideo import decode_token, encode_token
from kvslite.server.signaling import SignalingChannel
from kvslite.server.signaling.channels import ENABLED, Channels

DEFAULT_LIST_LIMIT = 10_000
# DescribeMappedResourceConfiguration's Type for a channel mapped to a stream (the model
# leaves Type a free string and AWS documents no value)
SIGNALING_CHANNEL_TYPE = "KINESIS_VIDEO_SIGNALING_CHANNEL"


class SignalingChannels:
    def __init__(self, channels: Channels, control: ControlPlane, *, endpoint_url: str):
        self.channels = channels
        self.control = control  # the streams media storage maps channels to
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
            "UpdateMediaStorageConfiguration": self.update_media_storage_configuration,
            "DescribeMappedResourceConfiguration": self.describe_mapped_resource_configuration,
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
        channel = self.channels.resolve(arn=request.channel_arn)
        config = request.single_master_channel_endpoint_configuration
        protocols = (config.protocols if config else None) or ["WSS", "HTTPS"]
        if "WEBRTC" in protocols and self.channels.media_storage(channel.arn)[0] != ENABLED:
            raise invalid("The WEBRTC protocol requires media storage to be enabled "
                          "on the channel")
        # WEBRTC is the base URL of JoinStorageSession, which this server also serves
        urls = {"HTTPS": self.endpoint_url, "WSS": websocket_url(self.endpoint_url),
                "WEBRTC": self.endpoint_url}
        return {"ResourceEndpointList": [
            {"Protocol": protocol, "ResourceEndpoint": urls[protocol]}
            for protocol in dict.fromkeys(protocols)]}

    # -- media storage (WebRTC ingestion) -------------------------------------------

    def update_media_storage_configuration(
            self, request: rq.UpdateMediaStorageConfigurationInput
    ) -> rs.UpdateMediaStorageConfigurationOutput:
        channel = self.channels.resolve(arn=request.channel_arn)
        config = request.media_storage_configuration
        if config.stream_arn is not None:
            stream = self.control.resolve(arn=config.stream_arn)
            if stream.data_retention_hours == 0:
                raise ApiError(NO_DATA_RETENTION, f"The stream {stream.name} keeps no data: "
                                                  f"media storage needs DataRetentionInHours > 0")
        self.channels.update_media_storage(channel, config.status, config.stream_arn)
        return {}

    def describe_media_storage_configuration(
            self, request: rq.DescribeMediaStorageConfigurationInput
    ) -> rs.DescribeMediaStorageConfigurationOutput:
        channel = self.channels.resolve(request.channel_name, request.channel_arn)
        status, stream_arn = self.channels.media_storage(channel.arn)
        # a channel with no stream answers StreamARN null, as AWS does (ops.wire)
        return {"MediaStorageConfiguration": {"Status": status, "StreamARN": stream_arn}}

    def describe_mapped_resource_configuration(
            self, request: rq.DescribeMappedResourceConfigurationInput
    ) -> rs.DescribeMappedResourceConfigurationOutput:
        stream = self.control.resolve(request.stream_name, request.stream_arn)
        after = decode_token(request.next_token)  # ARNs sort; a page holds at most one
        channel = self.channels.channel_for_stream(stream.arn)
        mapped: list[rs.MappedResourceConfigurationListItem] = (
            [] if channel is None or channel.arn <= after
            else [{"Type": SIGNALING_CHANNEL_TYPE, "ARN": channel.arn}])
        return {"MappedResourceConfigurationList": mapped}


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
