"""The IAM and STS APIs (issue 23, item 1) against a real server, with boto3's `iam` and
`sts` clients (the AWS CLI's: tests/test_aws_cli.py): users, access keys and inline
policies, every error code exactly; a user's key signs kinesisvideo requests until it is
deactivated or deleted; secrets are stored encrypted and never logged."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, ServerProcess, refusal

pytestmark = pytest.mark.slow  # one server for the module, started once

ADMIN = ("AKIDEXAMPLE", "secret")
POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["kinesisvideo:GetImages", "kinesisvideo:ListFragments"],
     "Resource": "arn:aws:kinesisvideo:*:*:stream/a/*"}]})


@dataclass
class Answer:
    status_code: int
    headers: dict
    text: str


def http(method: str, url: str, body: str | None = None, headers: dict | None = None
         ) -> Answer:
    request = urllib.request.Request(url, data=None if body is None else body.encode(),
                                     headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()},
                          response.read().decode())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("iam") / "data", "--access-key-id",
                           ADMIN[0], "--secret-access-key", ADMIN[1], "--access-log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def iam(server):
    return server.client("iam")


def test_users_are_created_read_listed_and_deleted(iam):
    created = iam.create_user(UserName="cam-1", Path="/cameras/")["User"]
    assert created["UserName"] == "cam-1" and created["Path"] == "/cameras/"
    assert created["Arn"] == "arn:aws:iam::000000000000:user/cameras/cam-1"
    assert created["UserId"].startswith("AIDA") and len(created["UserId"]) == 21
    assert iam.get_user(UserName="cam-1")["User"] == created
    iam.create_user(UserName="cam-2")
    listed = iam.list_users()
    assert [u["UserName"] for u in listed["Users"]] == ["cam-1", "cam-2"]
    assert listed["IsTruncated"] is False
    page = iam.list_users(MaxItems=1)
    assert [u["UserName"] for u in page["Users"]] == ["cam-1"] and page["IsTruncated"]
    rest = iam.list_users(Marker=page["Marker"])
    assert [u["UserName"] for u in rest["Users"]] == ["cam-2"]
    assert [u["UserName"] for u in iam.list_users(PathPrefix="/cameras/")["Users"]] == ["cam-1"]
    assert refusal(iam.create_user, UserName="cam-1")[:2] == ("EntityAlreadyExists", 409)
    assert refusal(iam.create_user, UserName="bad name!")[:2] == ("ValidationError", 400)
    assert refusal(iam.create_user, UserName="x" * 65)[:2] == ("ValidationError", 400)
    iam.delete_user(UserName="cam-1")
    iam.delete_user(UserName="cam-2")
    assert refusal(iam.get_user, UserName="cam-1")[:2] == ("NoSuchEntity", 404)
    assert refusal(iam.delete_user, UserName="cam-1")[:2] == ("NoSuchEntity", 404)
    assert iam.list_users()["Users"] == []


def test_access_keys_two_per_user_and_delete_conflict(iam):
    iam.create_user(UserName="keys")
    first = iam.create_access_key(UserName="keys")["AccessKey"]
    assert first["Status"] == "Active" and first["AccessKeyId"].startswith("AKIA")
    assert len(first["AccessKeyId"]) == 20 and len(first["SecretAccessKey"]) == 40
    second = iam.create_access_key(UserName="keys")["AccessKey"]
    assert refusal(iam.create_access_key, UserName="keys")[:2] == ("LimitExceeded", 409)
    listed = iam.list_access_keys(UserName="keys")["AccessKeyMetadata"]
    assert sorted(k["AccessKeyId"] for k in listed) == \
        sorted([first["AccessKeyId"], second["AccessKeyId"]])
    assert all("SecretAccessKey" not in k for k in listed)
    assert refusal(iam.delete_user, UserName="keys")[:2] == ("DeleteConflict", 409)
    iam.update_access_key(UserName="keys", AccessKeyId=first["AccessKeyId"], Status="Inactive")
    statuses = {k["AccessKeyId"]: k["Status"]
                for k in iam.list_access_keys(UserName="keys")["AccessKeyMetadata"]}
    assert statuses == {first["AccessKeyId"]: "Inactive", second["AccessKeyId"]: "Active"}
    assert refusal(iam.update_access_key, UserName="keys", AccessKeyId=first["AccessKeyId"],
                   Status="Sleeping")[:2] == ("ValidationError", 400)
    assert refusal(iam.update_access_key, UserName="keys", AccessKeyId="AKIANOSUCHKEY0000000",
                   Status="Active")[:2] == ("NoSuchEntity", 404)
    for key in (first, second):
        iam.delete_access_key(UserName="keys", AccessKeyId=key["AccessKeyId"])
    assert refusal(iam.delete_access_key, UserName="keys",
                   AccessKeyId=first["AccessKeyId"])[:2] == ("NoSuchEntity", 404)
    assert refusal(iam.create_access_key, UserName="nobody")[:2] == ("NoSuchEntity", 404)
    iam.delete_user(UserName="keys")


def test_inline_policies_are_put_read_listed_and_deleted(iam):
    iam.create_user(UserName="viewer")
    iam.put_user_policy(UserName="viewer", PolicyName="images", PolicyDocument=POLICY)
    got = iam.get_user_policy(UserName="viewer", PolicyName="images")
    assert (got["UserName"], got["PolicyName"]) == ("viewer", "images")
    assert got["PolicyDocument"] == json.loads(POLICY)  # boto3 decodes AWS's URL-encoding
    assert iam.list_user_policies(UserName="viewer")["PolicyNames"] == ["images"]
    assert refusal(iam.delete_user, UserName="viewer")[:2] == ("DeleteConflict", 409)
    iam.delete_user_policy(UserName="viewer", PolicyName="images")
    assert refusal(iam.get_user_policy, UserName="viewer",
                   PolicyName="images")[:2] == ("NoSuchEntity", 404)
    assert refusal(iam.delete_user_policy, UserName="viewer",
                   PolicyName="images")[:2] == ("NoSuchEntity", 404)
    assert refusal(iam.put_user_policy, UserName="nobody", PolicyName="p",
                   PolicyDocument=POLICY)[:2] == ("NoSuchEntity", 404)
    iam.delete_user(UserName="viewer")


@pytest.mark.parametrize("document", [
    "not json", "[]", json.dumps({"Statement": []}),
    json.dumps({"Version": "2012-10-17"}),
    json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "*",
                                                        "Resource": "*"}]}),
    json.dumps({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Resource": "*"}}),
    json.dumps({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*",
                                                       "NotAction": "*", "Resource": "*"}}),
    json.dumps({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": [1],
                                                       "Resource": "*"}}),
    # policies no request could be checked against: stored, they failed every request
    json.dumps({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                                                       "Action": "kinesisvideo",
                                                       "Resource": "*"}}),
    json.dumps({"Version": "2012-10-17", "Extra": 1, "Statement": {
        "Effect": "Allow", "Action": "kinesisvideo:GetImages", "Resource": "*"}}),
    json.dumps({"Version": "2012-10-17", "Statement": {
        "Effect": "Allow", "Action": "kinesisvideo:GetImages", "Resource": "*",
        "Condition": {"StringEquals": "x"}}}),
])
def test_a_malformed_policy_is_refused(iam, document):
    iam.create_user(UserName="shape")
    try:
        assert refusal(iam.put_user_policy, UserName="shape", PolicyName="p",
                       PolicyDocument=document)[:2] == ("MalformedPolicyDocument", 400)
        assert iam.list_user_policies(UserName="shape")["PolicyNames"] == []
    finally:
        iam.delete_user(UserName="shape")


def test_an_oversized_policy_is_refused_whitespace_not_counted(iam):
    iam.create_user(UserName="big")
    statement = {"Effect": "Allow", "Action": "kinesisvideo:GetImages", "Resource": "*"}

    def document(resource_chars: int) -> str:
        policy = {"Version": "2012-10-17",
                  "Statement": [{**statement, "Resource": "r" * resource_chars}]}
        return json.dumps(policy, separators=(",", ":"))

    fits = document(0)
    fits = document(2048 - len(fits))
    assert len(fits) == 2048
    iam.put_user_policy(UserName="big", PolicyName="fits", PolicyDocument=fits)
    pretty = json.dumps(json.loads(fits), indent=8)  # whitespace is free
    iam.put_user_policy(UserName="big", PolicyName="fits", PolicyDocument=pretty)
    too_big = document(2049 - len(document(0)))
    assert refusal(iam.put_user_policy, UserName="big", PolicyName="big",
                   PolicyDocument=too_big)[:2] == ("LimitExceeded", 409)
    iam.delete_user_policy(UserName="big", PolicyName="fits")
    iam.delete_user(UserName="big")


def test_a_users_key_signs_until_deactivated_or_deleted(server, iam):
    iam.create_user(UserName="device")
    key = iam.create_access_key(UserName="device")["AccessKey"]
    mine = (key["AccessKeyId"], key["SecretAccessKey"])
    kvs = server.client("kinesisvideo", key=mine[0], secret=mine[1])
    assert refusal(kvs.list_streams)[:2] == ("AccessDeniedException", 401)  # no policy: no action
    iam.put_user_policy(UserName="device", PolicyName="list", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                                                "Action": "kinesisvideo:ListStreams",
                                                "Resource": "*"}}))
    assert kvs.list_streams()["StreamInfoList"] == []
    identity = server.client("sts", key=mine[0], secret=mine[1]).get_caller_identity()
    assert (identity["Account"], identity["Arn"]) == \
        ("000000000000", "arn:aws:iam::000000000000:user/device")
    assert identity["UserId"] == iam.get_user(UserName="device")["User"]["UserId"]
    admin = server.client("sts").get_caller_identity()
    assert admin["Arn"] == "arn:aws:iam::000000000000:root"
    # managing IAM takes iam:<Action> in the user's policies, as any other action does
    user_iam = server.client("iam", key=mine[0], secret=mine[1])
    assert refusal(user_iam.list_users)[:2] == ("AccessDenied", 403)
    iam.put_user_policy(UserName="device", PolicyName="iam-read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                                                "Action": ["iam:List*", "iam:Get*"],
                                                "Resource": "*"}}))
    assert [u["UserName"] for u in user_iam.list_users()["Users"]] == ["device"]
    assert refusal(lambda: user_iam.create_user(UserName="intruder"))[:2] == ("AccessDenied", 403)
    iam.delete_user_policy(UserName="device", PolicyName="iam-read")

    assert refusal(server.client("kinesisvideo", key=mine[0], secret="wrong").list_streams)[:2] \
        == ("InvalidSignatureException", 403)
    iam.update_access_key(UserName="device", AccessKeyId=mine[0], Status="Inactive")
    assert refusal(kvs.list_streams)[:2] == ("UnrecognizedClientException", 403)
    # IAM and STS name the same refusal as AWS does for them
    assert refusal(server.client("sts", key=mine[0], secret=mine[1]).get_caller_identity)[:2] \
        == ("InvalidClientTokenId", 403)
    iam.update_access_key(UserName="device", AccessKeyId=mine[0], Status="Active")
    assert kvs.list_streams()["StreamInfoList"] == []
    iam.delete_access_key(UserName="device", AccessKeyId=mine[0])
    assert refusal(kvs.list_streams)[:2] == ("UnrecognizedClientException", 403)
    assert server.client("kinesisvideo").list_streams()["StreamInfoList"] == []  # the admin's
    iam.delete_user_policy(UserName="device", PolicyName="list")
    iam.delete_user(UserName="device")

    # secrets: encrypted in the database, never in the log; the caller's arn is logged
    database = sqlite3.connect(server.data_dir / "kvslite.db")
    dump = "\n".join(database.iterdump())
    database.close()
    assert mine[0] not in dump  # deleted with its key
    iam.create_user(UserName="kept")
    kept = iam.create_access_key(UserName="kept")["AccessKey"]
    database = sqlite3.connect(server.data_dir / "kvslite.db")
    rows = database.execute("SELECT access_key_id, secret FROM iam_access_keys").fetchall()
    dump = "\n".join(database.iterdump())
    database.close()
    assert [row[0] for row in rows] == [kept["AccessKeyId"]]
    assert kept["SecretAccessKey"].encode() not in rows[0][1]
    assert kept["SecretAccessKey"] not in dump
    log = server.output()
    assert mine[1] not in log and kept["SecretAccessKey"] not in log
    assert "who=arn:aws:iam::000000000000:user/device" in log
    assert "op=CreateAccessKey" in log and "who=arn:aws:iam::000000000000:root" in log
    iam.delete_access_key(UserName="kept", AccessKeyId=kept["AccessKeyId"])
    iam.delete_user(UserName="kept")


def test_the_wire_is_awss_query_protocol(server):
    """Raw: XML in the model's shapes, errors as ErrorResponse; a bad Action, a bad form
    and an unsigned request are clear errors; the web viewer still answers GET /."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    def post(body: str, service: str = "iam") -> Answer:
        request = AWSRequest("POST", server.endpoint + "/", data=body, headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        SigV4Auth(Credentials(*ADMIN), service, REGION).add_auth(request)
        return http("POST", request.url, body, dict(request.headers))

    answer = post("Action=GetUser&Version=2010-05-08&UserName=nobody")
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/xml")
    assert "<Type>Sender</Type><Code>NoSuchEntity</Code>" in answer.text
    assert answer.text.startswith('<ErrorResponse xmlns="https://iam.amazonaws.com/doc/')
    answer = post("Action=CreateUser&Version=2010-05-08&UserName=wire")
    assert answer.status_code == 200
    assert answer.text.startswith('<CreateUserResponse xmlns="https://iam.amazonaws.com/doc/'
                                  '2010-05-08/"><CreateUserResult><User><Path>/</Path>'
                                  '<UserName>wire</UserName>')
    assert "<ResponseMetadata><RequestId>" in answer.text
    policy = '{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}'
    assert post("Action=PutUserPolicy&Version=2010-05-08&UserName=wire&PolicyName=all"
                f"&PolicyDocument={quote(policy)}").status_code == 200
    answer = post("Action=GetUserPolicy&Version=2010-05-08&UserName=wire&PolicyName=all")
    assert f"<PolicyDocument>{quote(policy, safe='-_.~')}</PolicyDocument>" in answer.text
    post("Action=DeleteUserPolicy&Version=2010-05-08&UserName=wire&PolicyName=all")
    assert post("Action=DeleteUser&Version=2010-05-08&UserName=wire").text.startswith(
        '<DeleteUserResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
        "<ResponseMetadata><RequestId>")
    answer = post("Action=Explode&Version=2010-05-08")
    assert answer.status_code == 400 and "<Code>InvalidAction</Code>" in answer.text
    answer = post("Action=ListUsers&Version=2010-05-08", service="kinesisvideo")
    assert answer.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in answer.text
    unsigned = http("POST", server.endpoint + "/", "Action=ListUsers")
    assert unsigned.status_code == 403
    assert "<Code>MissingAuthenticationToken</Code>" in unsigned.text
    assert http("GET", server.endpoint + "/").status_code == 200


def test_an_administrator_of_a_path_manages_the_users_on_it_and_no_others(server, iam):
    """IAM policies name users with their path (arn:aws:iam::<account>:user/cameras/cam-7)."""
    iam.create_user(UserName="path-admin")
    iam.put_user_policy(UserName="path-admin", PolicyName="cameras", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": {
            "Effect": "Allow", "Action": "iam:*",
            "Resource": "arn:aws:iam::000000000000:user/cameras/*"}}))
    key = iam.create_access_key(UserName="path-admin")["AccessKey"]
    delegated = server.client("iam", key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    iam.create_user(UserName="ops-2")  # on the path "/"
    try:
        assert delegated.create_user(UserName="cam-7", Path="/cameras/")["User"]["Arn"] == \
            "arn:aws:iam::000000000000:user/cameras/cam-7"
        delegated.create_access_key(UserName="cam-7")
        assert refusal(delegated.create_user, UserName="cam-8")[:2] == ("AccessDenied", 403)
        with pytest.raises(ClientError) as refused:
            delegated.create_access_key(UserName="ops-2")
        assert refused.value.response["Error"]["Message"].endswith(
            "iam:CreateAccessKey on resource: arn:aws:iam::000000000000:user/ops-2")
    finally:
        for name in ("cam-7", "path-admin", "ops-2"):
            for listed in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                iam.delete_access_key(UserName=name, AccessKeyId=listed["AccessKeyId"])
            for policy in iam.list_user_policies(UserName=name)["PolicyNames"]:
                iam.delete_user_policy(UserName=name, PolicyName=policy)
            iam.delete_user(UserName=name)
