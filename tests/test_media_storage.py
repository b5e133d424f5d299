"""Media storage (WebRTC ingestion's control plane), through boto3 against a real
`kvslite serve`: UpdateMediaStorageConfiguration, DescribeMediaStorageConfiguration (a
null StreamARN on the wire, as AWS sends it), DescribeMappedResourceConfiguration and the
WEBRTC endpoint; every rule and error code; the mapping going with its channel or stream;
survival across a restart; two nodes sharing PostgreSQL seeing one mapping."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from postgres_server import fresh_database

INVALID = (400, "InvalidArgumentException")
IN_USE = (400, "ResourceInUseException")
NOT_FOUND = (404, "ResourceNotFoundException")
CHANNEL_TYPE = "KINESIS_VIDEO_SIGNALING_CHANNEL"


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers("--public-url", "https://kvs.example:8443")


@pytest.fixture(scope="module")
def kv(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="module")
def loose(server):
    """A client that leaves validation to the server."""
    return server.client("kinesisvideo", validate=False)


def code(call, **kwargs) -> tuple[int, str]:
    """(HTTP status, x-amzn-ErrorType) of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    meta = caught.value.response["ResponseMetadata"]
    return meta["HTTPStatusCode"], meta["HTTPHeaders"]["x-amzn-errortype"].split(":")[0]


def stream(kv, name: str, retention_hours: int = 24) -> str:
    return kv.create_stream(StreamName=name, DataRetentionInHours=retention_hours)["StreamARN"]


def channel(kv, name: str) -> str:
    return kv.create_signaling_channel(ChannelName=name)["ChannelARN"]


def enable(kv, channel_arn: str, stream_arn: str | None, status: str = "ENABLED") -> None:
    config = {"Status": status} if stream_arn is None else {"Status": status,
                                                             "StreamARN": stream_arn}
    kv.update_media_storage_configuration(ChannelARN=channel_arn,
                                          MediaStorageConfiguration=config)


def storage(kv, channel_arn: str) -> dict:
    """The raw JSON body of DescribeMediaStorageConfiguration, as the server sent it."""
    bodies = []
    event = "after-call.kinesis-video.DescribeMediaStorageConfiguration"

    def hook(http_response, **_):
        bodies.append(json.loads(http_response.content))
    kv.meta.events.register(event, hook)
    try:
        parsed = kv.describe_media_storage_configuration(ChannelARN=channel_arn)
    finally:
        kv.meta.events.unregister(event, hook)
    (body,) = bodies
    assert parsed["MediaStorageConfiguration"] == {
        k: v for k, v in body["MediaStorageConfiguration"].items() if v is not None}
    return body


def mapped(kv, **stream) -> list[dict]:
    return kv.describe_mapped_resource_configuration(**stream)["MappedResourceConfigurationList"]


def disable_with_null_stream(kv, channel_arn: str) -> None:
    """UpdateMediaStorageConfiguration as AWS's JS example sends it: `StreamARN: null`
    (boto3 leaves a None out, so the signed body is written here)."""
    body = json.dumps({"ChannelARN": channel_arn, "MediaStorageConfiguration": {
        "Status": "DISABLED", "StreamARN": None}}).encode()
    event = "before-sign.kinesis-video.UpdateMediaStorageConfiguration"

    def with_null(request, **_):
        request.data = body
    kv.meta.events.register(event, with_null)
    try:
        kv.update_media_storage_configuration(ChannelARN=channel_arn,
                                              MediaStorageConfiguration={"Status": "DISABLED"})
    finally:
        kv.meta.events.unregister(event, with_null)


def webrtc_endpoints(kv, channel_arn: str) -> list[dict]:
    return kv.get_signaling_channel_endpoint(
        ChannelARN=channel_arn, SingleMasterChannelEndpointConfiguration={
            "Protocols": ["WSS", "HTTPS", "WEBRTC"], "Role": "MASTER"})["ResourceEndpointList"]


def test_not_configured_is_disabled_with_a_null_stream_arn_on_the_wire(kv):
    arn = channel(kv, "plain")
    body = {"MediaStorageConfiguration": {"Status": "DISABLED", "StreamARN": None}}
    assert storage(kv, arn) == body
    assert kv.describe_media_storage_configuration(ChannelName="plain")[
        "MediaStorageConfiguration"] == {"Status": "DISABLED"}
    assert code(webrtc_endpoints, kv=kv, channel_arn=arn) == INVALID


def test_enable_disable_and_clear_a_channels_stream(kv):
    stream_arn, channel_arn = stream(kv, "porch-cam"), channel(kv, "porch")
    enable(kv, channel_arn, stream_arn)
    assert storage(kv, channel_arn) == {
        "MediaStorageConfiguration": {"Status": "ENABLED", "StreamARN": stream_arn}}
    assert mapped(kv, StreamName="porch-cam") == [{"Type": CHANNEL_TYPE, "ARN": channel_arn}]
    assert mapped(kv, StreamARN=stream_arn, MaxResults=1) == \
        [{"Type": CHANNEL_TYPE, "ARN": channel_arn}]
    assert webrtc_endpoints(kv, channel_arn) == [
        {"Protocol": "WSS", "ResourceEndpoint": "wss://kvs.example:8443"},
        {"Protocol": "HTTPS", "ResourceEndpoint": "https://kvs.example:8443"},
        {"Protocol": "WEBRTC", "ResourceEndpoint": "https://kvs.example:8443"}]
    enable(kv, channel_arn, stream_arn)  # again: unchanged

    enable(kv, channel_arn, stream_arn, "DISABLED")  # disabled, still mapped
    assert storage(kv, channel_arn) == {
        "MediaStorageConfiguration": {"Status": "DISABLED", "StreamARN": stream_arn}}
    assert mapped(kv, StreamARN=stream_arn) == [{"Type": CHANNEL_TYPE, "ARN": channel_arn}]
    assert code(webrtc_endpoints, kv=kv, channel_arn=channel_arn) == INVALID

    disable_with_null_stream(kv, channel_arn)  # unmapped
    assert storage(kv, channel_arn) == {
        "MediaStorageConfiguration": {"Status": "DISABLED", "StreamARN": None}}
    assert mapped(kv, StreamARN=stream_arn) == []
    enable(kv, channel_arn, None, "DISABLED")  # the same, StreamARN left out
    assert mapped(kv, StreamARN=stream_arn) == []


def test_each_rule_answers_its_aws_error(kv, loose):
    cam, other = stream(kv, "gate-cam"), stream(kv, "gate-cam-2")
    live_only = stream(kv, "live-only", retention_hours=0)
    gate, side = channel(kv, "gate"), channel(kv, "side")
    missing_stream = cam.rsplit("/", 1)[0] + "/1"
    missing_channel = gate.rsplit("/", 1)[0] + "/1"

    assert code(enable, kv=kv, channel_arn=gate, stream_arn=missing_stream) == NOT_FOUND
    assert code(enable, kv=kv, channel_arn=missing_channel, stream_arn=cam) == NOT_FOUND
    assert code(enable, kv=kv, channel_arn=gate, stream_arn=live_only) == \
        (400, "NoDataRetentionException")
    assert code(enable, kv=kv, channel_arn=gate, stream_arn=None) == INVALID
    assert code(loose.update_media_storage_configuration, ChannelARN=gate,
                MediaStorageConfiguration={"Status": "ON", "StreamARN": cam}) == INVALID
    assert code(loose.update_media_storage_configuration, ChannelARN=gate,
                MediaStorageConfiguration={"StreamARN": cam}) == INVALID
    assert code(loose.update_media_storage_configuration, ChannelARN=gate) == INVALID
    assert storage(kv, gate)["MediaStorageConfiguration"]["StreamARN"] is None

    enable(kv, gate, cam)
    assert code(enable, kv=kv, channel_arn=side, stream_arn=cam) == IN_USE  # stream taken
    assert code(enable, kv=kv, channel_arn=side, stream_arn=cam, status="DISABLED") == IN_USE
    assert code(enable, kv=kv, channel_arn=gate, stream_arn=other) == IN_USE  # channel's
    assert storage(kv, side)["MediaStorageConfiguration"]["StreamARN"] is None
    assert storage(kv, gate)["MediaStorageConfiguration"]["StreamARN"] == cam

    assert code(kv.describe_media_storage_configuration, ChannelARN=missing_channel) == \
        NOT_FOUND
    assert code(kv.describe_media_storage_configuration, ChannelName="nope") == NOT_FOUND
    assert code(loose.describe_media_storage_configuration) == INVALID
    assert code(kv.describe_mapped_resource_configuration, StreamName="nope") == NOT_FOUND
    assert code(kv.describe_mapped_resource_configuration, StreamARN=missing_stream) == \
        NOT_FOUND
    assert code(loose.describe_mapped_resource_configuration) == INVALID
    assert code(loose.describe_mapped_resource_configuration, StreamARN=cam,
                MaxResults=2) == INVALID
    assert code(loose.describe_mapped_resource_configuration, StreamARN=cam,
                NextToken="!") == INVALID
    assert mapped(kv, StreamARN=other) == []


def test_the_mapping_goes_with_its_channel_or_its_stream(kv):
    cam, door = stream(kv, "yard-cam"), channel(kv, "yard")
    enable(kv, door, cam)
    kv.delete_stream(StreamARN=cam)
    assert storage(kv, door) == {
        "MediaStorageConfiguration": {"Status": "DISABLED", "StreamARN": None}}
    assert code(enable, kv=kv, channel_arn=door, stream_arn=cam) == NOT_FOUND

    cam = stream(kv, "yard-cam")  # a new stream by the old name
    enable(kv, door, cam)
    kv.delete_signaling_channel(ChannelARN=door)
    assert mapped(kv, StreamARN=cam) == []
    enable(kv, channel(kv, "yard-2"), cam)  # the stream is free for another channel
    assert [item["ARN"].split("/")[1] for item in mapped(kv, StreamARN=cam)] == ["yard-2"]


@pytest.mark.slow  # two server starts
def test_the_mapping_survives_a_restart(start_server):
    server = start_server()
    kv = server.client("kinesisvideo")
    cam, door = stream(kv, "kept-cam"), channel(kv, "kept")
    enable(kv, door, cam)
    server.stop()
    server.start()
    kv = server.client("kinesisvideo")
    assert storage(kv, door) == {
        "MediaStorageConfiguration": {"Status": "ENABLED", "StreamARN": cam}}
    assert mapped(kv, StreamName="kept-cam") == [{"Type": CHANNEL_TYPE, "ARN": door}]


@pytest.mark.slow  # two servers and PostgreSQL
def test_two_nodes_sharing_postgresql_see_one_mapping(postgres_url, start_server):
    database = fresh_database(postgres_url)
    a, b = (start_server("--database-url", database) for _ in range(2))
    kv_a, kv_b = a.client("kinesisvideo"), b.client("kinesisvideo")
    cam, door, side = stream(kv_a, "shared-cam"), channel(kv_a, "shared"), channel(kv_a, "side")
    enable(kv_a, door, cam)
    assert storage(kv_b, door) == {
        "MediaStorageConfiguration": {"Status": "ENABLED", "StreamARN": cam}}
    assert mapped(kv_b, StreamARN=cam) == [{"Type": CHANNEL_TYPE, "ARN": door}]
    assert code(enable, kv=kv_b, channel_arn=side, stream_arn=cam) == IN_USE
    assert webrtc_endpoints(kv_b, door)[2]["Protocol"] == "WEBRTC"
    disable_with_null_stream(kv_b, door)
    assert storage(kv_a, door)["MediaStorageConfiguration"] == {"Status": "DISABLED",
                                                                "StreamARN": None}
