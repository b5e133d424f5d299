"""The HTTP edge: AWS-style errors for whatever a client sends, never a traceback.

What the edge answers is checked in process (the `in_process` fixture); what depends on
the socket (bodies refused before they are read, boto3 over HTTP) on a real server."""

from __future__ import annotations

import http.client
import json

import pytest
from botocore.exceptions import ClientError

from kvslite.server.edge import model


def raw_request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_aws_error(status, headers, body, expected_status, expected_code):
    assert status == expected_status
    assert headers["x-amzn-errortype"] == expected_code
    assert set(json.loads(body)) == {"message"}
    assert b"Traceback" not in body


def test_malformed_json(in_process):
    result = in_process.raw("POST", "/describeStream", b'{"StreamName": ',
                         {"content-type": "application/json"})
    assert_aws_error(*result, 400, "SerializationException")


def test_json_that_is_not_an_object(in_process):
    result = in_process.raw("POST", "/createStream", b'["a"]')
    assert_aws_error(*result, 400, "SerializationException")


def test_producer_style_pretty_json_with_tabs(in_process):
    body = b'{\n\t"StreamName":\t"tabbed",\n\t"DataRetentionInHours":\t2\n}'
    status, _, payload = in_process.raw("POST", "/createStream", body)
    assert status == 200 and json.loads(payload)["StreamARN"].split("/")[1] == "tabbed"


def test_unknown_path(in_process):
    result = in_process.raw("POST", "/noSuchOperation", b"{}")
    assert_aws_error(*result, 404, "UnknownOperationException")


def test_wrong_method(in_process):
    result = in_process.raw("GET", "/describeStream")
    assert_aws_error(*result, 405, "MethodNotAllowedException")


def test_huge_body_is_refused_before_it_is_read(shared_server):
    result = raw_request(shared_server, "POST", "/createStream", b"{" + b" " * (2 << 20) + b"}")
    assert_aws_error(*result, 413, "RequestEntityTooLargeException")
    # the server is still fine afterwards
    status, _, _ = raw_request(shared_server, "POST", "/listStreams", b"{}")
    assert status == 200


def test_huge_chunked_body_is_refused(shared_server):
    conn = http.client.HTTPConnection("127.0.0.1", shared_server.port, timeout=10)
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB, no Content-Length
    conn.request("POST", "/createStream", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert (response.status, response.getheader("x-amzn-ErrorType")) == \
        (413, "RequestEntityTooLargeException")


def test_wrong_member_type_in_nested_structure(in_process):
    body = json.dumps({"StreamNameCondition": {"ComparisonOperator": "ENDS_WITH"}}).encode()
    status, headers, payload = in_process.raw("POST", "/listStreams", body)
    assert_aws_error(status, headers, payload, 400, "InvalidArgumentException")
    assert "StreamNameCondition.ComparisonOperator" in json.loads(payload)["message"]


def implemented_operations() -> set[str]:
    """Operations the assembled server serves; everything else in the models answers 501."""
    import tempfile
    from pathlib import Path

    from kvslite.server.config import Settings
    from kvslite.server.main import build

    with tempfile.TemporaryDirectory() as data_dir:
        server = build(Settings(data_dir=Path(data_dir)))
        try:
            return set(server.app.handlers)
        finally:
            server.close()


def test_every_model_operation_is_served_or_clearly_not_implemented(in_process):
    """Walk all three botocore models: each operation either works or says it is missing."""
    implemented = implemented_operations()
    for path, route in model.routes().items():
        status, headers, payload = in_process.raw("POST", path, b"{}")
        if route.name in implemented:
            assert status != 501, route.name
            # an empty body breaks a required member or names no stream: a modeled error
            assert headers.get("x-amzn-errortype") != "NotImplementedException", route.name
        else:
            assert_aws_error(status, headers, payload, 501, "NotImplementedException")
            assert route.name in json.loads(payload)["message"]


def test_not_implemented_surfaces_in_boto3(shared_server):
    kinesisvideo = shared_server.client("kinesisvideo")
    with pytest.raises(ClientError) as e:
        kinesisvideo.describe_edge_configuration(StreamName="cam")
    assert e.value.response["Error"]["Code"] == "NotImplementedException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


def test_readme_compatibility_table_matches_the_server():
    """The README's table lists every model operation with its true status."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    implemented = implemented_operations()
    for route in model.routes().values():
        rows = [line for line in readme.splitlines() if line.startswith(f"| {route.name} |")]
        assert len(rows) == 1, f"README has no row for {route.name}"
        supported = "| yes |" in rows[0]
        assert supported == (route.name in implemented), route.name
