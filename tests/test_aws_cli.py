"""The AWS CLI against a real server (issue 23: "the AWS CLI ... manage users, keys and
policies"): the whole life of a device user with `--endpoint-url` and nothing else changed,
and the user's own key allowed one kinesisvideo action and refused it without a policy.

The CLI is AWS's own `awscli` from PyPI, which pins its own botocore, so `./scripts/test`
installs it into its own virtual environment, `.venv-awscli/` (KVSLITE_AWS_CLI names another
`aws` executable). Missing, the test skips on a developer's machine and fails under `CI`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REGION, ServerProcess
from engines import need

pytestmark = pytest.mark.slow  # a server, and the CLI starts a Python per command

ADMIN = ("AKIDEXAMPLE", "secret")
AWS_CLI = Path(os.environ.get("KVSLITE_AWS_CLI")
               or Path(__file__).resolve().parent.parent / ".venv-awscli" / "bin" / "aws")
LIST_STREAMS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kinesisvideo:ListStreams", "Resource": "*"}]}
ACCOUNT = "arn:aws:iam::000000000000"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout) if self.stdout.strip() else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need(os.access(AWS_CLI, os.X_OK), f"the AWS CLI at {AWS_CLI} (PyPI's awscli)")
    server = ServerProcess(tmp_path_factory.mktemp("awscli") / "data", "--access-key-id",
                           ADMIN[0], "--secret-access-key", ADMIN[1]).start()
    yield server
    server.stop()


def aws_as(server: ServerProcess, home: Path, key: tuple[str, str]):
    """`aws ARGS... --endpoint-url SERVER` signed with `key`; no profile or config is read."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AWS_ACCESS_KEY_ID": key[0],
           "AWS_SECRET_ACCESS_KEY": key[1], "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": str(home / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "none")}

    def aws(*args: str) -> Run:
        done = subprocess.run([str(AWS_CLI), *args, "--endpoint-url", server.endpoint,
                               "--output", "json"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        return Run(done.returncode, done.stdout, done.stderr)
    return aws


def test_the_aws_cli_manages_a_user_whose_key_is_then_allowed_and_refused(server, tmp_path):
    admin = aws_as(server, tmp_path, ADMIN)
    user = admin("iam", "create-user", "--user-name", "cli-cam").json()["User"]
    assert (user["UserName"], user["Arn"]) == ("cli-cam", f"{ACCOUNT}:user/cli-cam")
    key = admin("iam", "create-access-key", "--user-name", "cli-cam").json()["AccessKey"]
    assert key["Status"] == "Active" and len(key["SecretAccessKey"]) == 40
    policy_file = tmp_path / "list-streams.json"
    policy_file.write_text(json.dumps(LIST_STREAMS, indent=2))
    assert admin("iam", "put-user-policy", "--user-name", "cli-cam", "--policy-name", "list",
                 "--policy-document", f"file://{policy_file}").json() == {}
    assert [u["UserName"] for u in admin("iam", "list-users").json()["Users"]] == ["cli-cam"]
    got = admin("iam", "get-user-policy", "--user-name", "cli-cam", "--policy-name",
                "list").json()
    assert (got["UserName"], got["PolicyName"], got["PolicyDocument"]) == \
        ("cli-cam", "list", LIST_STREAMS)  # the CLI decodes IAM's URL-encoded document
    admin("kinesisvideo", "create-stream", "--stream-name", "cli-door").json()

    cam = aws_as(server, tmp_path, (key["AccessKeyId"], key["SecretAccessKey"]))
    identity = cam("sts", "get-caller-identity").json()
    assert (identity["Account"], identity["Arn"], identity["UserId"]) == \
        ("000000000000", f"{ACCOUNT}:user/cli-cam", user["UserId"])
    streams = cam("kinesisvideo", "list-streams").json()["StreamInfoList"]
    assert [s["StreamName"] for s in streams] == ["cli-door"]

    admin("iam", "delete-user-policy", "--user-name", "cli-cam", "--policy-name", "list").json()
    refused = cam("kinesisvideo", "list-streams")
    assert refused.returncode == 255 and refused.stdout == ""  # v1 CLI: 255 on any error
    assert refused.stderr.strip() == (
        "An error occurred (AccessDeniedException) when calling the ListStreams operation: "
        f"User: {ACCOUNT}:user/cli-cam is not authorized to perform: "
        "kinesisvideo:ListStreams on resource: *")

    admin("iam", "update-access-key", "--user-name", "cli-cam", "--access-key-id",
          key["AccessKeyId"], "--status", "Inactive").json()
    inactive = cam("kinesisvideo", "list-streams")
    assert inactive.returncode == 255 and inactive.stderr.strip() == (
        "An error occurred (UnrecognizedClientException) when calling the ListStreams "
        "operation: The security token included in the request is invalid.")

    admin("iam", "delete-access-key", "--user-name", "cli-cam", "--access-key-id",
          key["AccessKeyId"]).json()
    admin("iam", "delete-user", "--user-name", "cli-cam").json()
    assert admin("iam", "list-users").json()["Users"] == []
