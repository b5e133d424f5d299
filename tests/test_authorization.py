"""Every served operation as an IAM action and resource, and the edge's check of them
(kvslite.server.iam.actions, kvslite.server.edge.authorization)."""

from __future__ import annotations

import json

import pytest

from kvslite.server import metrics
from kvslite.server.api_errors import ApiError
from kvslite.server.edge import model
from kvslite.server.edge.access_log import DENIED, PRINCIPAL
from kvslite.server.edge.authorization import Authorizer, denial_status
from kvslite.server.iam import actions
from kvslite.server.iam.principal import Principal

ACCOUNT = "123456789012"
STREAM_A = f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT}:stream/A/1700000000000"
CHANNEL_C = f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT}:channel/C/1700000000000"
# operations the edge serves outside botocore's models
STREAMING = ("PutMedia", "ConnectAsMaster", "ConnectAsViewer")


def test_every_served_operation_has_an_action_and_a_resource_kind():
    served = {route.name for route in model.routes().values()} | set(STREAMING)
    assert served - set(actions.RESOURCE_KINDS) == set()
    assert set(actions.RESOURCE_KINDS) - served == set()
    for operation in served:
        assert actions.target(operation, {}).action == f"kinesisvideo:{operation}"


def test_the_resource_each_kind_of_request_names():
    assert actions.target("GetImages", {"StreamARN": STREAM_A}) == actions.Target(
        "kinesisvideo:GetImages", "stream", STREAM_A, None)
    assert actions.target("DescribeSignalingChannel", {"ChannelName": "C"}).name == "C"
    assert actions.target("JoinStorageSession", {"channelArn": CHANNEL_C}).arn == CHANNEL_C
    assert actions.target("GetIceServerConfig", {"ChannelARN": CHANNEL_C}).arn == CHANNEL_C
    assert actions.target("TagResource", {"ResourceARN": CHANNEL_C}).arn == CHANNEL_C
    assert actions.target("ListStreams", {}).arn == "*"


def authorizer() -> Authorizer:
    streams = {"A": STREAM_A}
    return Authorizer(region="us-east-1", account_id=ACCOUNT, stream_arn=streams.get,
                      channel_arn={"C": CHANNEL_C}.get)


def user(*statements) -> Principal:
    document = json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
    return Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/cam", name="cam", kind="user",
                     policies=(document,), variables={"aws:username": "cam"},
                     access_key_id="AKIACAM")


READ_A = {"Effect": "Allow", "Action": ["kinesisvideo:GetImages", "kinesisvideo:ListFragments"],
          "Resource": "arn:aws:kinesisvideo:*:*:stream/A/*"}


def test_a_name_is_checked_as_the_arn_of_the_stream_it_names():
    scope = {PRINCIPAL: user(READ_A)}
    authorizer().check(scope, "GetImages", {"StreamName": "A"})
    authorizer().check(scope, "ListFragments", {"StreamARN": STREAM_A})
    assert DENIED not in scope


def test_a_refusal_names_caller_action_and_resource_and_is_counted():
    scope = {PRINCIPAL: user(READ_A)}
    before = metrics.ACCESS_DENIED.labels("kinesisvideo:DeleteStream")._value.get()
    with pytest.raises(ApiError) as refused:
        authorizer().check(scope, "DeleteStream", {"StreamName": "A"})
    assert (refused.value.code, refused.value.status) == ("AccessDeniedException", 401)
    assert refused.value.message == (
        f"User: arn:aws:iam::{ACCOUNT}:user/cam is not authorized to perform: "
        f"kinesisvideo:DeleteStream on resource: {STREAM_A}")
    assert metrics.ACCESS_DENIED.labels("kinesisvideo:DeleteStream")._value.get() == before + 1
    assert scope[DENIED] == "kinesisvideo:DeleteStream"


def test_a_name_that_names_nothing_is_checked_as_every_arn_it_could_have():
    with pytest.raises(ApiError) as refused:
        authorizer().check({PRINCIPAL: user(READ_A)}, "GetImages", {"StreamName": "B"})
    assert refused.value.message.endswith(
        f"on resource: arn:aws:kinesisvideo:us-east-1:{ACCOUNT}:stream/B/*")
    creator = user({"Effect": "Allow", "Action": "kinesisvideo:CreateStream",
                    "Resource": "arn:aws:kinesisvideo:*:*:stream/${aws:username}/*"})
    authorizer().check({PRINCIPAL: creator}, "CreateStream", {"StreamName": "cam"})


def test_the_administrator_and_anonymous_callers_are_not_evaluated():
    admin = Principal(arn=f"arn:aws:iam::{ACCOUNT}:root", name="root", kind="admin")
    authorizer().check({PRINCIPAL: admin}, "DeleteStream", {"StreamName": "A"})
    authorizer().check({}, "DeleteStream", {"StreamName": "A"})


@pytest.mark.parametrize("operation, status", [
    ("DeleteStream", 401), ("CreateSignalingChannel", 401),  # kinesisvideo's model
    ("JoinStorageSession", 403),  # webrtc-storage's
    ("GetImages", 403), ("GetMedia", 403), ("GetIceServerConfig", 403),  # models without it
    ("PutMedia", 403), ("ConnectAsViewer", 403),
])
def test_the_status_of_a_refusal_is_the_operations_models(operation, status):
    assert denial_status(operation) == status


def test_the_iam_api_needs_iam_actions_on_the_user_named():
    admin_of_cams = user({"Effect": "Allow", "Action": "iam:*",
                          "Resource": f"arn:aws:iam::{ACCOUNT}:user/cam-*"})
    authorizer().check_iam({PRINCIPAL: admin_of_cams}, "CreateUser", {"UserName": "cam-7"})
    authorizer().check_iam({PRINCIPAL: admin_of_cams}, "GetCallerIdentity", {})
    with pytest.raises(ApiError) as refused:
        authorizer().check_iam({PRINCIPAL: admin_of_cams}, "DeleteUser", {"UserName": "ops"})
    assert (refused.value.code, refused.value.status) == ("AccessDenied", 403)
    assert refused.value.message == (
        f"User: arn:aws:iam::{ACCOUNT}:user/cam is not authorized to perform: "
        f"iam:DeleteUser on resource: arn:aws:iam::{ACCOUNT}:user/ops")
    with pytest.raises(ApiError) as refused:  # no UserName: the caller's own user, "cam"
        authorizer().check_iam({PRINCIPAL: admin_of_cams}, "ListAccessKeys", {})
    assert refused.value.message.endswith(
        f"iam:ListAccessKeys on resource: arn:aws:iam::{ACCOUNT}:user/cam")


def test_an_iam_resource_names_the_users_path():
    paths = Authorizer(region="us-east-1", account_id=ACCOUNT, stream_arn={}.get,
                       channel_arn={}.get, user_path={"cam-7": "/cameras/"}.get)
    admin_of_path = user({"Effect": "Allow", "Action": "iam:*",
                          "Resource": f"arn:aws:iam::{ACCOUNT}:user/cameras/*"})
    scope = {PRINCIPAL: admin_of_path}
    paths.check_iam(scope, "CreateUser", {"UserName": "cam-8", "Path": "/cameras/"})
    paths.check_iam(scope, "DeleteUser", {"UserName": "cam-7"})  # its stored path
    for params in ({"UserName": "cam-8"}, {"UserName": "cam-9", "Path": "/other/"}):
        with pytest.raises(ApiError) as refused:
            paths.check_iam(scope, "CreateUser", params)
        assert refused.value.message.endswith(
            f"on resource: arn:aws:iam::{ACCOUNT}:user{params.get('Path', '/')}"
            f"{params['UserName']}")
    with pytest.raises(ApiError) as refused:  # a user that does not exist: on the path "/"
        paths.check_iam(scope, "DeleteUser", {"UserName": "cam-x"})
    assert refused.value.message.endswith(f"on resource: arn:aws:iam::{ACCOUNT}:user/cam-x")
