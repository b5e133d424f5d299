"""The `kinesisvideo` service: the stream control plane, one method per operation.

Each method takes the validated request parameters (member names as in the
botocore model) and returns the output members; the edge serializes them.
"""

from __future__ import annotations

import base64
import binascii

from kvslite.archive import Stream
from kvslite.archive.control_plane import ControlPlane
from kvslite.archive.fragments import Archive
from kvslite.errors import ApiError, invalid, not_found

DEFAULT_LIST_LIMIT = 10_000


class KinesisVideo:
    def __init__(self, control: ControlPlane, archive: Archive, *, endpoint_url: str):
        self.control = control
        self.archive = archive
        self.endpoint_url = endpoint_url

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

    def _stream(self, params: dict) -> Stream:
        return self.control.resolve(params.get("StreamName"), params.get("StreamARN"))

    # -- streams ---------------------------------------------------------------------

    def create_stream(self, params: dict) -> dict:
        stream = self.control.create(
            params["StreamName"],
            retention_hours=params.get("DataRetentionInHours", 0),
            device_name=params.get("DeviceName"),
            media_type=params.get("MediaType"),
            kms_key_id=params.get("KmsKeyId"),
            tags=params.get("Tags"),
        )
        return {"StreamARN": stream.arn}

    def describe_stream(self, params: dict) -> dict:
        return {"StreamInfo": stream_info(self._stream(params))}

    def list_streams(self, params: dict) -> dict:
        condition = params.get("StreamNameCondition") or {}
        if condition and condition.get("ComparisonOperator", "BEGINS_WITH") != "BEGINS_WITH":
            raise invalid("StreamNameCondition supports only BEGINS_WITH")
        prefix = condition.get("ComparisonValue", "")
        limit = params.get("MaxResults", DEFAULT_LIST_LIMIT)
        after = _decode_token(params.get("NextToken"))
        page = self.control.list_streams(prefix=prefix, after=after, limit=limit + 1)
        result = {"StreamInfoList": [stream_info(s) for s in page[:limit]]}
        if len(page) > limit:
            result["NextToken"] = _encode_token(page[limit - 1].name)
        return result

    def update_stream(self, params: dict) -> dict:
        stream = self._stream(params)
        changes = {}
        if "DeviceName" in params:
            changes["device_name"] = params["DeviceName"]
        if "MediaType" in params:
            changes["media_type"] = params["MediaType"]
        self.control.update(stream, params["CurrentVersion"], **changes)
        return {}

    def delete_stream(self, params: dict) -> dict:
        stream = self.control.resolve(arn=params["StreamARN"])
        self.control.delete(stream, params.get("CurrentVersion"))
        self.archive.delete_stream_media(stream)  # rows went with the stream; now the bytes
        return {}

    def update_data_retention(self, params: dict) -> dict:
        stream = self._stream(params)
        self.control.change_retention(stream, params["CurrentVersion"], params["Operation"],
                                      params["DataRetentionChangeInHours"])
        return {}

    def get_data_endpoint(self, params: dict) -> dict:
        self._stream(params)
        return {"DataEndpoint": self.endpoint_url}

    # -- tags on streams (by name or ARN) --------------------------------------------

    def tag_stream(self, params: dict) -> dict:
        self.control.tag(self._stream(params), params["Tags"])
        return {}

    def untag_stream(self, params: dict) -> dict:
        self.control.untag(self._stream(params), params["TagKeyList"])
        return {}

    def list_tags_for_stream(self, params: dict) -> dict:
        return {"Tags": self.control.tags(self._stream(params))}

    # -- tags on resources (by ARN; streams are the only resources kvslite has) -------

    def _resource(self, arn: str) -> Stream:
        if ":stream/" not in arn:
            raise not_found(f"The resource {arn} was not found (kvslite has streams only)")
        return self.control.resolve(arn=arn)

    def tag_resource(self, params: dict) -> dict:
        tags = {}
        for tag in params["Tags"]:
            tags[tag["Key"]] = tag["Value"]
        self.control.tag(self._resource(params["ResourceARN"]), tags)
        return {}

    def untag_resource(self, params: dict) -> dict:
        self.control.untag(self._resource(params["ResourceARN"]), params["TagKeyList"])
        return {}

    def list_tags_for_resource(self, params: dict) -> dict:
        return {"Tags": self.control.tags(self._resource(params["ResourceARN"]))}


def stream_info(stream: Stream) -> dict:
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


def _encode_token(last_name: str) -> str:
    return base64.b64encode(last_name.encode()).decode()


def _decode_token(token: str | None) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError("InvalidArgumentException", "NextToken is not valid") from None
