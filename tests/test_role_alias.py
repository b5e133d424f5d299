"""--iot-role-alias NAME=POLICY_FILE: the policy is read and checked at start-up, as
every device's requests will be checked against it; a fault is named then, not met as a
failure on each device's request."""

from __future__ import annotations

import json

import pytest

from kvslite.server.edge.credential_provider import parse_role_alias

GOOD = {"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                                              "Action": "kinesisvideo:PutMedia",
                                              "Resource": "*"}}


def test_a_valid_policy_is_kept_as_written(tmp_path):
    path = tmp_path / "camera.json"
    path.write_text(json.dumps(GOOD, indent=2))
    alias = parse_role_alias(f"camera={path}")
    assert (alias.name, alias.policy) == ("camera", path.read_text())


@pytest.mark.parametrize("document, fault", [
    ("not json", "not valid JSON"),
    (json.dumps({"Version": "2012-10-17"}), "needs a Statement"),
    (json.dumps({**GOOD, "Statement": {**GOOD["Statement"], "Action": "kinesisvideo"}}),
     "service:action"),
    (json.dumps({**GOOD, "Statement": {**GOOD["Statement"], "Condition": {"Bool": "x"}}}),
     "must map keys to values"),
])
def test_an_invalid_policy_is_refused_at_start_up(tmp_path, document, fault):
    path = tmp_path / "camera.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=f"--iot-role-alias camera: .* {fault}"):
        parse_role_alias(f"camera={path}")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="--iot-role-alias camera: cannot read"):
        parse_role_alias(f"camera={tmp_path / 'none.json'}")
