"""The policy language (kvslite.server.iam.policy), on AWS's documented examples."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvslite.server.iam.policy import (
    ALLOW,
    DENY,
    IMPLICIT_DENY,
    PolicyError,
    decide,
    is_allowed,
    parse,
)

STREAM_A = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/A/1700000000000"
STREAM_B = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/B/1700000000001"


def doc(*statements, version="2012-10-17") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)})


def allow(action, resource, **extra) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action, resource, **extra) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def verdict(document: str, action: str, resource: str, context=None) -> str:
    return decide([parse(document)], action, resource, context or {})


def test_default_deny_allow_and_explicit_deny_wins():
    readers = doc(allow(["kinesisvideo:GetImages", "kinesisvideo:ListFragments"],
                        "arn:aws:kinesisvideo:*:*:stream/A/*"))
    assert verdict(readers, "kinesisvideo:GetImages", STREAM_A) == ALLOW
    assert verdict(readers, "kinesisvideo:GetImages", STREAM_B) == IMPLICIT_DENY
    assert verdict(readers, "kinesisvideo:DeleteStream", STREAM_A) == IMPLICIT_DENY
    everything_but_deletes = doc(allow("kinesisvideo:*", "*"),
                                 deny("kinesisvideo:Delete*", "*"))
    assert verdict(everything_but_deletes, "kinesisvideo:PutMedia", STREAM_A) == ALLOW
    assert verdict(everything_but_deletes, "kinesisvideo:DeleteStream", STREAM_A) == DENY
    # a Deny in one policy beats an Allow in another
    policies = [parse(doc(allow("*", "*"))), parse(doc(deny("kinesisvideo:PutMedia", STREAM_B)))]
    assert decide(policies, "kinesisvideo:PutMedia", STREAM_B, {}) == DENY
    assert decide(policies, "kinesisvideo:PutMedia", STREAM_A, {}) == ALLOW
    assert decide([], "kinesisvideo:PutMedia", STREAM_A, {}) == IMPLICIT_DENY


def test_a_single_statement_object_and_string_values():
    single = json.dumps({"Version": "2012-10-17",
                         "Statement": allow("kinesisvideo:GetImages", STREAM_A)})
    assert is_allowed([single], "kinesisvideo:GetImages", STREAM_A, {})
    assert not is_allowed([single], "kinesisvideo:GetImages", STREAM_B, {})


def test_actions_match_without_case_resources_with_it():
    policy = doc(allow("KinesisVideo:getimages", "arn:aws:kinesisvideo:*:*:stream/A/*"))
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A) == ALLOW
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A.replace("/A/", "/a/")) \
        == IMPLICIT_DENY


def test_wildcards_star_and_question_mark():
    policy = doc(allow("kinesisvideo:Get?mages", "arn:aws:kinesisvideo:*:*:stream/cam-??/*"))
    camera = "arn:aws:kinesisvideo:eu-west-1:1:stream/cam-07/1"
    assert verdict(policy, "kinesisvideo:GetImages", camera) == ALLOW
    assert verdict(policy, "kinesisvideo:GetImages", camera.replace("cam-07", "cam-7")) \
        == IMPLICIT_DENY
    assert verdict(policy, "kinesisvideo:GetXImages", camera) == IMPLICIT_DENY


def test_not_action_allows_every_other_action():
    # AWS's example: everything except IAM
    policy = doc({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert verdict(policy, "kinesisvideo:DeleteStream", STREAM_A) == ALLOW
    assert verdict(policy, "iam:CreateUser", "arn:aws:iam::1:user/bob") == IMPLICIT_DENY


def test_not_resource_denies_all_but_the_named_resources():
    policy = doc(allow("kinesisvideo:*", "*"),
                 {"Effect": "Deny", "Action": "kinesisvideo:PutMedia",
                  "NotResource": ["arn:aws:kinesisvideo:*:*:stream/A/*"]})
    assert verdict(policy, "kinesisvideo:PutMedia", STREAM_A) == ALLOW
    assert verdict(policy, "kinesisvideo:PutMedia", STREAM_B) == DENY


def test_policy_variables_in_resources():
    # AWS IoT's documented KVS role policy: a device reaches only its own stream
    policy = doc(allow("kinesisvideo:PutMedia",
                       "arn:aws:kinesisvideo:*:*:stream/${credentials-iot:ThingName}/*"))
    camera = {"credentials-iot:ThingName": "A"}
    assert verdict(policy, "kinesisvideo:PutMedia", STREAM_A, camera) == ALLOW
    assert verdict(policy, "kinesisvideo:PutMedia", STREAM_B, camera) == IMPLICIT_DENY
    # no value: the resource matches nothing (not even a stream named "${...}")
    assert verdict(policy, "kinesisvideo:PutMedia", STREAM_A, {}) == IMPLICIT_DENY
    own = doc(allow("kinesisvideo:*", "arn:aws:kinesisvideo:*:*:stream/${aws:username}-*/*"))
    mine = "arn:aws:kinesisvideo:us-east-1:1:stream/alice-cam/5"
    assert verdict(own, "kinesisvideo:GetImages", mine, {"aws:username": "alice"}) == ALLOW
    assert verdict(own, "kinesisvideo:GetImages", mine, {"aws:username": "bob"}) \
        == IMPLICIT_DENY


def test_a_substituted_value_is_literal_text_never_a_wildcard():
    policy = doc(allow("kinesisvideo:*", "arn:aws:kinesisvideo:*:*:stream/${aws:username}/*"))
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A, {"aws:username": "*"}) \
        == IMPLICIT_DENY


def test_variable_defaults_and_escapes():
    policy = doc(allow("kinesisvideo:*",
                       "arn:aws:kinesisvideo:*:*:stream/${aws:username, 'guest'}/*"))
    guest = "arn:aws:kinesisvideo:us-east-1:1:stream/guest/5"
    assert verdict(policy, "kinesisvideo:GetImages", guest, {}) == ALLOW
    escaped = doc(allow("kinesisvideo:*", "arn:aws:kinesisvideo:r:1:stream/a${*}b${?}${$}/1"))
    assert verdict(escaped, "kinesisvideo:GetImages", "arn:aws:kinesisvideo:r:1:stream/a*b?$/1") \
        == ALLOW
    assert verdict(escaped, "kinesisvideo:GetImages", "arn:aws:kinesisvideo:r:1:stream/axb?$/1") \
        == IMPLICIT_DENY


def test_variables_are_plain_text_in_version_2008():
    policy = doc(allow("kinesisvideo:*", "arn:aws:kinesisvideo:*:*:stream/${aws:username}/*"),
                 version="2008-10-17")
    context = {"aws:username": "A"}
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A, context) == IMPLICIT_DENY
    literal = "arn:aws:kinesisvideo:us-east-1:1:stream/${aws:username}/1"
    assert verdict(policy, "kinesisvideo:GetImages", literal, context) == ALLOW


def test_conditions_on_the_callers_variables():
    policy = doc(allow("kinesisvideo:*", "*",
                       Condition={"StringLike": {"aws:username": "cam-*"}}))
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A, {"aws:username": "cam-1"}) \
        == ALLOW
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A, {"aws:username": "ops"}) \
        == IMPLICIT_DENY
    assert verdict(policy, "kinesisvideo:GetImages", STREAM_A, {}) == IMPLICIT_DENY


def test_conditions_kvslite_cannot_evaluate_fail_closed():
    unknown = {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
    allowing = doc(allow("kinesisvideo:*", "*", Condition=unknown))
    assert verdict(allowing, "kinesisvideo:GetImages", STREAM_A) == IMPLICIT_DENY
    denying = doc(allow("kinesisvideo:*", "*"), deny("kinesisvideo:*", "*", Condition=unknown))
    assert verdict(denying, "kinesisvideo:GetImages", STREAM_A) == DENY


@pytest.mark.parametrize("document, complaint", [
    ("not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    (json.dumps({"Version": "2012-10-17"}), "needs a Statement"),
    (json.dumps({"Version": "2019-01-01", "Statement": []}), "Version must be"),
    (doc({"Effect": "Permit", "Action": "*", "Resource": "*"}), "Effect must be"),
    (doc({"Effect": "Allow", "Resource": "*"}), "exactly one of Action and NotAction"),
    (doc({"Effect": "Allow", "Action": "*", "NotAction": "*", "Resource": "*"}),
     "exactly one of Action and NotAction"),
    (doc({"Effect": "Allow", "Action": "*"}), "exactly one of Resource and NotResource"),
    (doc({"Effect": "Allow", "Action": "GetImages", "Resource": "*"}), "service:action"),
    (doc({"Effect": "Allow", "Action": [], "Resource": "*"}), "non-empty string or list"),
    (doc({"Effect": "Allow", "Action": "*", "Resource": 7}), "non-empty string or list"),
    (doc(allow("*", "*", Principal="*")), "may not specify a Principal"),
    (doc(allow("*", "*", Colour="red")), "Unknown statement element"),
    (doc(allow("*", "*", Condition={"StringEquals": "x"})), "must map keys to values"),
    ("[" * 100_000, "not valid JSON"),
])
def test_malformed_documents_are_refused_with_a_reason(document, complaint):
    with pytest.raises(PolicyError, match=complaint):
        parse(document)


names = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=20)


@given(names, names)
def test_a_literal_resource_matches_only_itself(name, other):
    arn = f"arn:aws:kinesisvideo:us-east-1:1:stream/{name}/1"
    policy = doc(allow("kinesisvideo:GetImages", arn))
    assert verdict(policy, "kinesisvideo:GetImages", arn) == ALLOW
    other_arn = f"arn:aws:kinesisvideo:us-east-1:1:stream/{other}/1"
    assert verdict(policy, "kinesisvideo:GetImages", other_arn) == (
        ALLOW if other == name else IMPLICIT_DENY)


@given(names, names)
def test_a_thing_name_policy_matches_exactly_the_things_own_stream(thing, stream):
    policy = doc(allow("kinesisvideo:PutMedia",
                       "arn:aws:kinesisvideo:*:*:stream/${credentials-iot:ThingName}/*"))
    arn = f"arn:aws:kinesisvideo:us-east-1:1:stream/{stream}/1"
    expected = ALLOW if stream == thing else IMPLICIT_DENY
    assert verdict(policy, "kinesisvideo:PutMedia", arn,
                   {"credentials-iot:ThingName": thing}) == expected
