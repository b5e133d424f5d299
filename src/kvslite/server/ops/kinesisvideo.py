"""The `kinesisvideo` service: the stream control plane, one method per operation.

Each method takes its typed request (`kvslite.server.ops.requests`) and returns its typed result
(`kvslite.server.ops.responses`), both generated from the botocore model; the edge serializes it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from kvslite.server.archive import Stream
from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.api_errors import INVALID_ARGUMENT, ApiError, invalid, not_found
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.signaling.channels import Channels, is_channel_arn

DEFAULT_LIST_LIMIT = 10_000


class KinesisVideo:
    def __init__(self, control: ControlPlane, *, endpoint_url: str,
                 on_delete: Callable[[], None] = lambda: None,
                 channels: Channels | None = None):
        self.control = control
        self.channels = channels  # TagResource and friends on channel ARNs
        self.endpoint_url = endpoint_url
        self.on_delete = on_delete

    def operations(self) -> dict:
        return {
            "CreateStream": self.create_stream, "DescribeStream": self.describe_stream,
            "ListStreams": self.list_streams, "UpdateStream": self.update_stream,
            "DeleteStream": self.delete_stream,
            "UpdateDataRetention": self.update_data_retention,
            "GetDataEndpoint": self.get_data_endpoint,
            "TagStream": self.tag_stream, "UntagStream": self.untag_stream,
            "ListTagsForStream": self.list_tags_for_stream,
            "TagResource": self.tag_resource, "UntagResource": self.untag_resource,
            "ListTagsForResource": self.list_tags_for_resource,
        }

    def _stream(self, request) -> Stream:
        """The stream a request names by StreamName and/or StreamARN."""
        return self.control.resolve(request.stream_name, request.stream_arn)

    # -- streams ---------------------------------------------------------------------

    def create_stream(self, request: rq.CreateStreamInput) -> rs.CreateStreamOutput:
        stream = self.control.create(
            request.stream_name,
            retention_hours=request.data_retention_in_hours or 0,
            device_name=request.device_name,
            media_type=request.media_type,
            kms_key_id=request.kms_key_id,
            tags=request.tags,
        )
        return {"StreamARN": stream.arn}

    def describe_stream(self, request: rq.DescribeStreamInput) -> rs.DescribeStreamOutput:
        stream = self.control.resolve(request.stream_name, request.stream_arn,
                                      deleting_ok=True)
        return {"StreamInfo": stream_info(stream)}

    def list_streams(self, request: rq.ListStreamsInput) -> rs.ListStreamsOutput:
        condition = request.stream_name_condition
        if condition and (condition.comparison_operator or "BEGINS_WITH") != "BEGINS_WITH":
            raise invalid("StreamNameCondition supports only BEGINS_WITH")
        prefix = (condition.comparison_value if condition else None) or ""
        limit = request.max_results or DEFAULT_LIST_LIMIT
        after = decode_token(request.next_token)
        page = self.control.list_streams(prefix=prefix, after=after, limit=limit + 1)
        result: rs.ListStreamsOutput = {"StreamInfoList": [stream_info(s) for s in page[:limit]]}
        if len(page) > limit:
            result["NextToken"] = encode_token(page[limit - 1].name)
        return result

    def update_stream(self, request: rq.UpdateStreamInput) -> rs.UpdateStreamOutput:
        stream = self._stream(request)
        self.control.update(stream, request.current_version, device_name=request.device_name,
                            media_type=request.media_type)
        return {}

    def delete_stream(self, request: rq.DeleteStreamInput) -> rs.DeleteStreamOutput:
        stream = self.control.resolve(arn=request.stream_arn)
        self.control.delete(stream, request.current_version)
        self.on_delete()  # media and rows go in the background
        return {}

    def update_data_retention(self, request: rq.UpdateDataRetentionInput
                              ) -> rs.UpdateDataRetentionOutput:
        stream = self._stream(request)
        self.control.change_retention(stream, request.current_version, request.operation,
                                      request.data_retention_change_in_hours)
        return {}

    def get_data_endpoint(self, request: rq.GetDataEndpointInput) -> rs.GetDataEndpointOutput:
        self._stream(request)
        return {"DataEndpoint": self.endpoint_url}

    # -- tags on streams (by name or ARN) --------------------------------------------

    def tag_stream(self, request: rq.TagStreamInput) -> rs.TagStreamOutput:
        self.control.tag(self._stream(request), request.tags)
        return {}

    def untag_stream(self, request: rq.UntagStreamInput) -> rs.UntagStreamOutput:
        self.control.untag(self._stream(request), request.tag_key_list)
        return {}

    def list_tags_for_stream(self, request: rq.ListTagsForStreamInput
                             ) -> rs.ListTagsForStreamOutput:
        return {"Tags": self.control.tags(self._stream(request))}

    # -- tags on resources (by ARN: a stream's or a signaling channel's) -------------

    def _resource(self, arn: str) -> tuple[ControlPlane | Channels, Any]:
        """Who keeps the resource's tags, and the resource."""
        if is_channel_arn(arn) and self.channels is not None:
            return self.channels, self.channels.resolve(arn=arn)
        if ":stream/" not in arn:
            raise not_found(f"The resource {arn} was not found (kvslite has streams and "
                            f"signaling channels)")
        return self.control, self.control.resolve(arn=arn)

    def tag_resource(self, request: rq.TagResourceInput) -> rs.TagResourceOutput:
        keeper, resource = self._resource(request.resource_arn)
        keeper.tag(resource, {tag.key: tag.value for tag in request.tags})
        return {}

    def untag_resource(self, request: rq.UntagResourceInput) -> rs.UntagResourceOutput:
        keeper, resource = self._resource(request.resource_arn)
        keeper.untag(resource, request.tag_key_list)
        return {}

    def list_tags_for_resource(self, request: rq.ListTagsForResourceInput
                               ) -> rs.ListTagsForResourceOutput:
        keeper, resource = self._resource(request.resource_arn)
        return {"Tags": keeper.tags(resource)}


def stream_info(stream: Stream) -> rs.StreamInfo:
    return {
        "DeviceName": stream.device_name,
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "MediaType": stream.media_type,
        "KmsKeyId": stream.kms_key_id,
        "Version": stream.version,
        "Status": stream.status,
        "CreationTime": stream.creation_time,
        "DataRetentionInHours": stream.data_retention_hours,
    }


def encode_token(last_name: str) -> str:
    return base64.b64encode(last_name.encode()).decode()


def decode_token(token: str | None) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(INVALID_ARGUMENT, "NextToken is not valid") from None
