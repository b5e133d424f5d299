"""The stream control plane end to end: boto3 against a real `kvslite serve`."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ClientError


def error_of(excinfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_create_and_describe(kvs):
    arn = kvs.create_stream(StreamName="cam-1", DataRetentionInHours=24, DeviceName="dev-1",
                            MediaType="video/h264", Tags={"site": "lab"})["StreamARN"]
    assert re.fullmatch(r"arn:aws:kinesisvideo:us-east-1:000000000000:stream/cam-1/\d{13}", arn)
    info = kvs.describe_stream(StreamName="cam-1")["StreamInfo"]
    assert info["StreamARN"] == arn
    assert info["Status"] == "ACTIVE"
    assert info["DataRetentionInHours"] == 24
    assert info["DeviceName"] == "dev-1"
    assert info["MediaType"] == "video/h264"
    assert info["KmsKeyId"] == "arn:aws:kms:us-east-1:000000000000:alias/aws/kinesisvideo"
    assert re.fullmatch(r"[a-zA-Z0-9]+", info["Version"])
    assert kvs.describe_stream(StreamARN=arn)["StreamInfo"] == info
    assert kvs.describe_stream(StreamName="cam-1", StreamARN=arn)["StreamInfo"] == info


def test_create_duplicate_is_resource_in_use(kvs):
    kvs.create_stream(StreamName="dup")
    with pytest.raises(ClientError) as e:
        kvs.create_stream(StreamName="dup")
    assert error_of(e) == ("ResourceInUseException", 400)


def test_unknown_stream_is_404(kvs):
    with pytest.raises(ClientError) as e:
        kvs.describe_stream(StreamName="no-such-stream")
    assert error_of(e) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as e:
        kvs.describe_stream(StreamARN="arn:aws:kinesisvideo:us-east-1:000000000000:stream/x/1")
    assert error_of(e) == ("ResourceNotFoundException", 404)


def test_name_and_arn_must_agree(kvs):
    kvs.create_stream(StreamName="agree-a")
    arn_b = kvs.create_stream(StreamName="agree-b")["StreamARN"]
    with pytest.raises(ClientError) as e:
        kvs.describe_stream(StreamName="agree-a", StreamARN=arn_b)
    assert error_of(e) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as e:
        kvs.describe_stream()
    assert error_of(e) == ("InvalidArgumentException", 400)


def test_list_streams_pages_and_prefix(kvs):
    names = [f"list_{i:02d}" for i in range(7)]
    for name in names:
        kvs.create_stream(StreamName=name)
    kvs.create_stream(StreamName="listX")  # '_' must not act as a wildcard
    condition = {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "list_"}
    seen, token, pages = [], None, 0
    while True:
        kwargs = {"MaxResults": 3, "StreamNameCondition": condition}
        if token:
            kwargs["NextToken"] = token
        page = kvs.list_streams(**kwargs)
        pages += 1
        seen += [s["StreamName"] for s in page["StreamInfoList"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == names
    assert pages == 3
    everything = kvs.list_streams()["StreamInfoList"]
    assert {"listX", *names} <= {s["StreamName"] for s in everything}


def test_list_streams_rejects_a_forged_token(kvs):
    with pytest.raises(ClientError) as e:
        kvs.list_streams(NextToken="!!notbase64")
    assert error_of(e) == ("InvalidArgumentException", 400)


def test_update_stream_checks_version(kvs):
    kvs.create_stream(StreamName="upd", MediaType="video/h264")
    version = kvs.describe_stream(StreamName="upd")["StreamInfo"]["Version"]
    kvs.update_stream(StreamName="upd", CurrentVersion=version, MediaType="video/h265",
                      DeviceName="new-device")
    info = kvs.describe_stream(StreamName="upd")["StreamInfo"]
    assert (info["MediaType"], info["DeviceName"]) == ("video/h265", "new-device")
    assert info["Version"] != version
    with pytest.raises(ClientError) as e:
        kvs.update_stream(StreamName="upd", CurrentVersion=version, MediaType="video/h264")
    assert error_of(e) == ("VersionMismatchException", 400)


def test_delete_stream_checks_version(kvs):
    arn = kvs.create_stream(StreamName="del")["StreamARN"]
    with pytest.raises(ClientError) as e:
        kvs.delete_stream(StreamARN=arn, CurrentVersion="wrongversion")
    assert error_of(e) == ("VersionMismatchException", 400)
    version = kvs.describe_stream(StreamARN=arn)["StreamInfo"]["Version"]
    kvs.delete_stream(StreamARN=arn, CurrentVersion=version)
    with pytest.raises(ClientError) as e:
        kvs.describe_stream(StreamName="del")
    assert error_of(e) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as e:
        kvs.delete_stream(StreamARN=arn)
    assert error_of(e) == ("ResourceNotFoundException", 404)
    # the name is free again, and the new stream has a new ARN
    assert kvs.create_stream(StreamName="del")["StreamARN"] != arn


def test_update_data_retention(kvs):
    kvs.create_stream(StreamName="ret", DataRetentionInHours=5)

    def change(operation, hours, version=None):
        version = version or kvs.describe_stream(StreamName="ret")["StreamInfo"]["Version"]
        kvs.update_data_retention(StreamName="ret", CurrentVersion=version,
                                  Operation=operation, DataRetentionChangeInHours=hours)
        return kvs.describe_stream(StreamName="ret")["StreamInfo"]["DataRetentionInHours"]

    assert change("INCREASE_DATA_RETENTION", 10) == 15
    assert change("DECREASE_DATA_RETENTION", 15) == 0
    with pytest.raises(ClientError) as e:
        change("DECREASE_DATA_RETENTION", 1)
    assert error_of(e) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as e:
        change("INCREASE_DATA_RETENTION", 87_601)
    assert error_of(e) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as e:
        change("INCREASE_DATA_RETENTION", 1, version="stale")
    assert error_of(e) == ("VersionMismatchException", 400)


def test_get_data_endpoint_for_every_api(kvs, shared_server):
    kvs.create_stream(StreamName="ep")
    api_names = kvs.meta.service_model.shape_for("APIName").enum
    assert len(api_names) == 8
    for api in api_names:
        assert kvs.get_data_endpoint(StreamName="ep", APIName=api)["DataEndpoint"] == \
            shared_server.endpoint
    with pytest.raises(ClientError) as e:
        kvs.get_data_endpoint(StreamName="no-ep", APIName="GET_IMAGES")
    assert error_of(e) == ("ResourceNotFoundException", 404)


def test_stream_tags(kvs):
    arn = kvs.create_stream(StreamName="tags", Tags={"a": "1"})["StreamARN"]
    kvs.tag_stream(StreamName="tags", Tags={"b": "2", "a": "one"})
    assert kvs.list_tags_for_stream(StreamARN=arn)["Tags"] == {"a": "one", "b": "2"}
    kvs.untag_stream(StreamARN=arn, TagKeyList=["a", "missing"])
    assert kvs.list_tags_for_stream(StreamName="tags")["Tags"] == {"b": "2"}
    with pytest.raises(ClientError) as e:
        kvs.tag_stream(StreamName="tags", Tags={f"k{i}": "v" for i in range(50)})
    assert error_of(e) == ("TagsPerResourceExceededLimitException", 400)
    assert kvs.list_tags_for_stream(StreamName="tags")["Tags"] == {"b": "2"}  # unchanged
    with pytest.raises(ClientError) as e:
        kvs.tag_stream(StreamName="no-tags-stream", Tags={"a": "b"})
    assert error_of(e) == ("ResourceNotFoundException", 404)


def test_resource_tags(kvs):
    arn = kvs.create_stream(StreamName="rtags")["StreamARN"]
    kvs.tag_resource(ResourceARN=arn, Tags=[{"Key": "team", "Value": "vision"},
                                            {"Key": "env", "Value": "dev"}])
    assert kvs.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "vision",
                                                                    "env": "dev"}
    kvs.untag_resource(ResourceARN=arn, TagKeyList=["env"])
    assert kvs.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "vision"}
    with pytest.raises(ClientError) as e:
        kvs.tag_resource(ResourceARN=arn, Tags=[{"Key": f"k{i}", "Value": "v"}
                                                for i in range(50)])
    assert error_of(e) == ("TagsPerResourceExceededLimitException", 400)
    channel = "arn:aws:kinesisvideo:us-east-1:000000000000:channel/ch/123"
    with pytest.raises(ClientError) as e:
        kvs.list_tags_for_resource(ResourceARN=channel)
    assert error_of(e) == ("ResourceNotFoundException", 404)


def test_create_with_too_many_tags(shared_server):
    kvs = shared_server.client("kinesisvideo", validate=False)
    with pytest.raises(ClientError) as e:
        kvs.create_stream(StreamName="many-tags", Tags={f"k{i}": "v" for i in range(51)})
    assert error_of(e) == ("InvalidArgumentException", 400)
    assert "Tags" in e.value.response["Error"]["Message"]


@pytest.mark.parametrize("kwargs, member", [
    ({"StreamName": "bad name!"}, "StreamName"),                    # pattern
    ({"StreamName": "x" * 257}, "StreamName"),                      # max length
    ({"StreamName": "ok", "DataRetentionInHours": -1}, "DataRetentionInHours"),  # min
    ({"StreamName": "ok", "DataRetentionInHours": "1"}, "DataRetentionInHours"),  # type
    ({"StreamName": "ok", "MediaType": "not a media type"}, "MediaType"),
    ({"StreamName": "ok", "Tags": {"k": "bad\u0000value"}}, "Tags"),
])
def test_model_validation_names_the_member(shared_server, kwargs, member):
    kvs = shared_server.client("kinesisvideo", validate=False)
    with pytest.raises(ClientError) as e:
        kvs.create_stream(**kwargs)
    assert error_of(e) == ("InvalidArgumentException", 400)
    assert member in e.value.response["Error"]["Message"]


def test_enum_and_required_members_are_enforced(shared_server):
    kvs = shared_server.client("kinesisvideo", validate=False)
    kvs.create_stream(StreamName="enum")
    with pytest.raises(ClientError) as e:
        kvs.get_data_endpoint(StreamName="enum", APIName="PUT_EVERYTHING")
    assert error_of(e) == ("InvalidArgumentException", 400)
    assert "APIName" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        kvs.get_data_endpoint(StreamName="enum")
    assert error_of(e) == ("InvalidArgumentException", 400)
    assert "APIName" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        kvs.list_streams(MaxResults=10_001)
    assert error_of(e) == ("InvalidArgumentException", 400)
