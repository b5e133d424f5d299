"""Each operation kvslite serves, as the IAM action and resource a policy must allow.

Actions are those of AWS's service authorization reference for Kinesis Video Streams
(prefix `kinesisvideo`). They carry the operation's name, including the ones that are not
botocore operations: `kinesisvideo:PutMedia` (the streaming upload) and
`kinesisvideo:ConnectAsMaster` / `kinesisvideo:ConnectAsViewer` (the signaling WebSocket;
GetIceServerConfig and SendAlexaOfferToMaster are their own actions). Pages of an HLS/DASH
session are not checked one by one: the session URL was checked (GetHLSStreamingSessionURL,
GetDASHStreamingSessionURL) and its token carries the grant.

The resource is what AWS names in its resource types:

- stream operations: the stream's ARN, `arn:aws:kinesisvideo:<region>:<account>:stream/<name>/
  <creation ms>`. A request that gives only StreamName is checked against the ARN of the
  stream with that name, as AWS does (so policies match `.../stream/<name>/*`); where no stream
  has that name (CreateStream, or a stream that does not exist) against `.../stream/<name>/*`
  itself, which `.../stream/<name>/*` and wider patterns match and a creation-time ARN does not;
- channel operations: the channel's ARN the same way;
- TagResource, UntagResource, ListTagsForResource: the ResourceARN given;
- List* operations (and ListEdgeAgentConfigurations, which names a hub device): `*`.

The IAM API's operations are `iam:<operation>` on the user they name
(`arn:aws:iam::<account>:user<path><name>`, the user's path included as on AWS: CreateUser's
Path, else the stored user's, "/" for a user that does not exist; the caller's own user where
UserName is left out, as AWS does), ListUsers on `*`. STS GetCallerIdentity needs no
permission, as on AWS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvslite.server.iam.principal import user_arn

SERVICE = "kinesisvideo"
STREAM, CHANNEL, GIVEN, ANY = "stream", "channel", "given", "*"

# operation -> the kind of resource its action is checked on
_STREAM_OPERATIONS = (
    "CreateStream", "DeleteStream", "DescribeStream", "UpdateStream", "UpdateDataRetention",
    "GetDataEndpoint", "TagStream", "UntagStream", "ListTagsForStream",
    "DescribeImageGenerationConfiguration", "UpdateImageGenerationConfiguration",
    "DescribeNotificationConfiguration", "UpdateNotificationConfiguration",
    "DescribeMappedResourceConfiguration", "DescribeEdgeConfiguration",
    "StartEdgeConfigurationUpdate", "DeleteEdgeConfiguration",
    "DescribeStreamStorageConfiguration", "UpdateStreamStorageConfiguration",
    "PutMedia", "GetMedia", "GetClip", "GetImages", "GetMediaForFragmentList", "ListFragments",
    "GetHLSStreamingSessionURL", "GetDASHStreamingSessionURL",
)
_CHANNEL_OPERATIONS = (
    "CreateSignalingChannel", "DeleteSignalingChannel", "DescribeSignalingChannel",
    "UpdateSignalingChannel", "GetSignalingChannelEndpoint",
    "DescribeMediaStorageConfiguration", "UpdateMediaStorageConfiguration",
    "GetIceServerConfig", "SendAlexaOfferToMaster", "ConnectAsMaster", "ConnectAsViewer",
    "JoinStorageSession", "JoinStorageSessionAsViewer",
)
RESOURCE_KINDS: dict[str, str] = {
    **{operation: STREAM for operation in _STREAM_OPERATIONS},
    **{operation: CHANNEL for operation in _CHANNEL_OPERATIONS},
    "TagResource": GIVEN, "UntagResource": GIVEN, "ListTagsForResource": GIVEN,
    "ListStreams": ANY, "ListSignalingChannels": ANY, "ListEdgeAgentConfigurations": ANY,
}


@dataclass(frozen=True)
class Target:
    """What one request must be allowed: `action` on a resource. `arn` is the ARN the request
    gave, `name` the name (of a stream or channel) where it gave only that; the resource is
    then the ARN of what bears that name (see the module's docstring)."""

    action: str
    kind: str
    arn: str | None = None
    name: str | None = None


def target(operation: str, params: Mapping[str, object]) -> Target:
    """The action and resource of a parsed request; KeyError for an operation not mapped."""
    kind = RESOURCE_KINDS[operation]
    action = f"{SERVICE}:{operation}"
    if kind == STREAM:
        return Target(action, kind, _text(params, "StreamARN"), _text(params, "StreamName"))
    if kind == CHANNEL:
        arn = _text(params, "ChannelARN") or _text(params, "channelArn")
        return Target(action, kind, arn, _text(params, "ChannelName"))
    if kind == GIVEN:
        return Target(action, kind, _text(params, "ResourceARN"))
    return Target(action, kind, "*")


def unresolved_arn(kind: str, name: str, *, region: str, account_id: str) -> str:
    """The resource of a name that names nothing (yet): every ARN that name could have."""
    return f"arn:aws:{SERVICE}:{region}:{account_id}:{kind}/{name}/*"


def _text(params: Mapping[str, object], key: str) -> str | None:
    value = params.get(key)
    return value if isinstance(value, str) and value else None


NO_PERMISSION_NEEDED = {"GetCallerIdentity"}


def iam_resource(operation: str, params: Mapping[str, object], *, account_id: str,
                 caller: str, user_path: Callable[[str], str | None]) -> str:
    """The resource of an IAM API request by the user named `caller`; `user_path` gives a
    stored user's path (None if there is no such user)."""
    if operation == "ListUsers":
        return "*"
    name = _text(params, "UserName") or caller
    path = _text(params, "Path") if operation == "CreateUser" else user_path(name)
    return user_arn(account_id, path or "/", name)
