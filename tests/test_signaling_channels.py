"""Signaling channels in the control plane, through boto3 against a real `kvslite serve`:
every operation, AWS's ARNs, defaults and error codes, paging, version compare-and-set,
deletion, tags on channel ARNs, GetSignalingChannelEndpoint, survival across a restart,
and two nodes sharing PostgreSQL seeing the same channels."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ClientError
from postgres_server import fresh_database

from kvslite.server.signaling.channels import Channels
from kvslite.server.store.sqlite import SqliteMetadataStore

ARN = re.compile(r"arn:aws:kinesisvideo:us-east-1:\d{12}:channel/(?P<name>[\w.-]+)/\d{13}")


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def kv(server):
    return server.client("kinesisvideo")


@pytest.fixture(scope="module")
def loose(server):
    """A client that leaves validation to the server."""
    return server.client("kinesisvideo", validate=False)


def error(call, **kwargs) -> tuple[int, str, str]:
    """(HTTP status, x-amzn-ErrorType, message) of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    meta = response["ResponseMetadata"]
    return (meta["HTTPStatusCode"], meta["HTTPHeaders"]["x-amzn-errortype"].split(":")[0],
            response["Error"]["Message"])


def code(call, **kwargs) -> tuple[int, str]:
    return error(call, **kwargs)[:2]


def test_create_then_describe_by_name_or_arn_with_aws_defaults(kv):
    arn = kv.create_signaling_channel(ChannelName="front-door")["ChannelARN"]
    assert ARN.fullmatch(arn)["name"] == "front-door"
    info = kv.describe_signaling_channel(ChannelName="front-door")["ChannelInfo"]
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"] == info
    assert kv.describe_signaling_channel(ChannelName="front-door",
                                         ChannelARN=arn)["ChannelInfo"] == info
    assert info["ChannelName"] == "front-door" and info["ChannelARN"] == arn
    assert (info["ChannelType"], info["ChannelStatus"]) == ("SINGLE_MASTER", "ACTIVE")
    assert info["SingleMasterConfiguration"] == {"MessageTtlSeconds": 60}
    assert re.fullmatch(r"[a-zA-Z0-9]{1,64}", info["Version"])
    assert int(arn.rsplit("/", 1)[1]) == int(info["CreationTime"].timestamp() * 1000)

    arn = kv.create_signaling_channel(ChannelName="mesh", ChannelType="FULL_MESH",
                                      SingleMasterConfiguration={"MessageTtlSeconds": 5}
                                      )["ChannelARN"]
    info = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert (info["ChannelType"], info["SingleMasterConfiguration"]) == \
        ("FULL_MESH", {"MessageTtlSeconds": 5})
    assert code(kv.create_signaling_channel, ChannelName="mesh") == \
        (400, "ResourceInUseException")


def test_bad_input_gets_aws_errors_from_the_server(kv, loose):
    arn = kv.create_signaling_channel(ChannelName="validated")["ChannelARN"]
    invalid = (400, "InvalidArgumentException")
    assert code(loose.create_signaling_channel, ChannelName="bad name!") == invalid
    assert code(loose.create_signaling_channel, ChannelName="x" * 257) == invalid
    assert code(loose.create_signaling_channel, ChannelName="") == invalid
    assert code(loose.create_signaling_channel, ChannelName="t", ChannelType="STAR") == invalid
    for ttl in (4, 121):
        assert code(loose.create_signaling_channel, ChannelName="ttl",
                    SingleMasterConfiguration={"MessageTtlSeconds": ttl}) == invalid
        version = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["Version"]
        assert code(loose.update_signaling_channel, ChannelARN=arn, CurrentVersion=version,
                    SingleMasterConfiguration={"MessageTtlSeconds": ttl}) == invalid
    assert code(loose.describe_signaling_channel, ChannelARN="not-an-arn") == invalid
    assert code(loose.describe_signaling_channel) == invalid  # neither name nor ARN
    assert error(loose.describe_signaling_channel, ChannelName="other", ChannelARN=arn) == \
        (400, "InvalidArgumentException",
         f"ChannelName other and ChannelARN {arn} name different channels")
    assert code(loose.list_signaling_channels, NextToken="abc") == invalid
    assert code(loose.list_signaling_channels, MaxResults=0) == invalid
    assert code(loose.get_signaling_channel_endpoint, ChannelARN=arn,
                SingleMasterChannelEndpointConfiguration={"Protocols": [],
                                                          "Role": "MASTER"}) == invalid
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"][
        "SingleMasterConfiguration"] == {"MessageTtlSeconds": 60}  # nothing changed


def test_unknown_channels_are_404_resource_not_found(kv, server):
    arn = "arn:aws:kinesisvideo:us-east-1:123456789012:channel/nowhere/1700000000000"
    missing = (404, "ResourceNotFoundException")
    assert code(kv.describe_signaling_channel, ChannelName="nowhere") == missing
    assert code(kv.describe_signaling_channel, ChannelARN=arn) == missing
    assert code(kv.update_signaling_channel, ChannelARN=arn, CurrentVersion="v1") == missing
    assert code(kv.delete_signaling_channel, ChannelARN=arn) == missing
    assert code(kv.get_signaling_channel_endpoint, ChannelARN=arn) == missing
    assert code(kv.describe_media_storage_configuration, ChannelARN=arn) == missing
    assert code(kv.list_tags_for_resource, ResourceARN=arn) == missing
    assert code(kv.tag_resource, ResourceARN=arn, Tags=[{"Key": "k", "Value": "v"}]) == \
        missing
    # a stream's ARN names no channel
    stream = kv.create_stream(StreamName="not-a-channel")["StreamARN"]
    assert code(kv.describe_signaling_channel, ChannelARN=stream) == missing


def test_list_pages_by_name_with_begins_with(kv):
    for name in ("pg-c", "pg-a", "pg-e", "pg-b", "pg-d", "pgx", "other-pg-a"):
        kv.create_signaling_channel(ChannelName=name)
    condition = {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "pg-"}
    pages, token = [], None
    while True:
        page = kv.list_signaling_channels(MaxResults=2, ChannelNameCondition=condition,
                                          **({"NextToken": token} if token else {}))
        pages.append([c["ChannelName"] for c in page["ChannelInfoList"]])
        token = page.get("NextToken")
        if token is None:
            break
    assert pages == [["pg-a", "pg-b"], ["pg-c", "pg-d"], ["pg-e"]]
    everything = kv.list_signaling_channels()["ChannelInfoList"]
    names = [c["ChannelName"] for c in everything]
    assert names == sorted(names) and {"pgx", "other-pg-a", "pg-a"} <= set(names)
    info = next(c for c in everything if c["ChannelName"] == "pg-a")
    assert info == kv.describe_signaling_channel(ChannelName="pg-a")["ChannelInfo"]


def test_update_is_compare_and_set_on_the_version(kv):
    arn = kv.create_signaling_channel(ChannelName="cas")["ChannelARN"]
    old = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["Version"]
    kv.update_signaling_channel(ChannelARN=arn, CurrentVersion=old,
                                SingleMasterConfiguration={"MessageTtlSeconds": 120})
    info = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert info["SingleMasterConfiguration"] == {"MessageTtlSeconds": 120}
    assert info["Version"] != old
    assert code(kv.update_signaling_channel, ChannelARN=arn, CurrentVersion=old,
                SingleMasterConfiguration={"MessageTtlSeconds": 30}) == \
        (400, "VersionMismatchException")
    assert code(kv.delete_signaling_channel, ChannelARN=arn, CurrentVersion=old) == \
        (400, "VersionMismatchException")
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"] == info


def test_delete_then_gone_and_the_name_is_free(kv):
    arn = kv.create_signaling_channel(ChannelName="brief",
                                      Tags=[{"Key": "k", "Value": "v"}])["ChannelARN"]
    version = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["Version"]
    kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=version)
    missing = (404, "ResourceNotFoundException")
    assert code(kv.describe_signaling_channel, ChannelARN=arn) == missing
    assert code(kv.describe_signaling_channel, ChannelName="brief") == missing
    assert code(kv.delete_signaling_channel, ChannelARN=arn) == missing
    assert "brief" not in [c["ChannelName"] for c in
                           kv.list_signaling_channels()["ChannelInfoList"]]
    again = kv.create_signaling_channel(ChannelName="brief")["ChannelARN"]
    assert again != arn
    assert kv.list_tags_for_resource(ResourceARN=again)["Tags"] == {}
    kv.delete_signaling_channel(ChannelARN=again)  # no version: the latest
    assert code(kv.describe_signaling_channel, ChannelARN=again) == missing


def test_endpoints_for_each_role_and_protocol(kv, server):
    arn = kv.create_signaling_channel(ChannelName="ends")["ChannelARN"]
    for role in ("MASTER", "VIEWER"):
        endpoints = kv.get_signaling_channel_endpoint(
            ChannelARN=arn, SingleMasterChannelEndpointConfiguration={
                "Protocols": ["WSS", "HTTPS"], "Role": role})["ResourceEndpointList"]
        assert endpoints == [
            {"Protocol": "WSS", "ResourceEndpoint": f"ws://127.0.0.1:{server.port}"},
            {"Protocol": "HTTPS", "ResourceEndpoint": server.endpoint}]
    assert error(kv.get_signaling_channel_endpoint, ChannelARN=arn,
                 SingleMasterChannelEndpointConfiguration={
                     "Protocols": ["WSS", "HTTPS", "WEBRTC"], "Role": "MASTER"})[:2] == \
        (400, "InvalidArgumentException")
    assert kv.describe_media_storage_configuration(ChannelARN=arn)[
        "MediaStorageConfiguration"] == {"Status": "DISABLED"}
    assert kv.describe_media_storage_configuration(ChannelName="ends")[
        "MediaStorageConfiguration"] == {"Status": "DISABLED"}


def test_tags_on_channel_arns(kv):
    arn = kv.create_signaling_channel(
        ChannelName="tagged", Tags=[{"Key": "site", "Value": "north"}])["ChannelARN"]
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"site": "north"}
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "floor", "Value": "2"},
                                           {"Key": "site", "Value": "south"}])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"floor": "2",
                                                                  "site": "south"}
    kv.untag_resource(ResourceARN=arn, TagKeyList=["site", "absent"])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"floor": "2"}
    too_many = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]  # + floor = 51
    assert code(kv.tag_resource, ResourceARN=arn, Tags=too_many) == \
        (400, "TagsPerResourceExceededLimitException")
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"floor": "2"}
    full = kv.create_signaling_channel(ChannelName="many-tags", Tags=too_many)["ChannelARN"]
    assert len(kv.list_tags_for_resource(ResourceARN=full)["Tags"]) == 50  # the limit
    # streams keep their own tags apart
    stream = kv.create_stream(StreamName="tagged", Tags={"site": "stream"})["StreamARN"]
    assert kv.list_tags_for_resource(ResourceARN=stream)["Tags"] == {"site": "stream"}
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"floor": "2"}


def test_delete_tells_the_on_delete_listeners(tmp_path):
    store = SqliteMetadataStore(tmp_path / "meta.db")
    try:
        channels = Channels(store, region="us-east-1", account_id="123456789012")
        told = []
        channels.on_delete.append(told.append)
        channel = channels.create("hooked")
        assert channels.find(channel.arn) == channel
        channels.delete(channel, None)
        assert told == [channel]
        assert channels.find(channel.arn) is None
    finally:
        store.close()


@pytest.mark.slow  # two server starts
def test_channels_survive_a_restart(start_server, tmp_path):
    server = start_server("--public-url", "https://kvs.example:8443")
    kv = server.client("kinesisvideo")
    arn = kv.create_signaling_channel(ChannelName="kept",
                                      Tags=[{"Key": "k", "Value": "v"}])["ChannelARN"]
    info = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    server.stop()
    server.start()
    kv = server.client("kinesisvideo")
    assert kv.describe_signaling_channel(ChannelName="kept")["ChannelInfo"] == info
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"k": "v"}
    endpoints = kv.get_signaling_channel_endpoint(
        ChannelARN=arn, SingleMasterChannelEndpointConfiguration={
            "Protocols": ["HTTPS", "WSS"], "Role": "VIEWER"})["ResourceEndpointList"]
    assert endpoints == [{"Protocol": "HTTPS", "ResourceEndpoint": "https://kvs.example:8443"},
                         {"Protocol": "WSS", "ResourceEndpoint": "wss://kvs.example:8443"}]


def test_two_nodes_sharing_postgresql_see_the_same_channels(postgres_url, start_server):
    database = fresh_database(postgres_url)
    a, b = (start_server("--database-url", database) for _ in range(2))
    kv_a, kv_b = a.client("kinesisvideo"), b.client("kinesisvideo")
    arn = kv_a.create_signaling_channel(ChannelName="shared")["ChannelARN"]
    assert kv_b.describe_signaling_channel(ChannelName="shared")["ChannelInfo"] == \
        kv_a.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert code(kv_b.create_signaling_channel, ChannelName="shared") == \
        (400, "ResourceInUseException")
    kv_b.delete_signaling_channel(ChannelARN=arn)
    assert code(kv_a.describe_signaling_channel, ChannelARN=arn) == \
        (404, "ResourceNotFoundException")
