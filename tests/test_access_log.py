"""`--access-log`: one line per request, keyed by the request id the client saw."""

from __future__ import annotations

import json
import re
import time

import pytest
from botocore.exceptions import ClientError
from kvs_media import put_mkv

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # a server per test

LINE = re.compile(r"kvslite\.access: (?P<id>[0-9a-f-]{36}) (?P<method>\S+) (?P<path>\S+) "
                  r"op=(?P<op>\S+) stream=(?P<stream>\S+) status=(?P<status>\S+) "
                  r"bytes=(?P<bytes>\d+) ms=(?P<ms>[\d.]+)")


def access_lines(server) -> dict[str, dict]:
    return {m["id"]: m.groupdict() for m in LINE.finditer(server.output())}


def wait_for_line(server, request_id: str, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while request_id not in (lines := access_lines(server)):
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)
    return lines[request_id]


def test_one_line_per_request_with_the_request_id_the_client_saw(start_server, h264):
    server = start_server("--access-log")
    kvs = server.client("kinesisvideo")
    created = kvs.create_stream(StreamName="logged", DataRetentionInHours=1)
    line = wait_for_line(server, created["ResponseMetadata"]["RequestId"])
    assert (line["method"], line["path"], line["op"], line["stream"], line["status"]) == \
        ("POST", "/createStream", "CreateStream", "logged", "200")
    assert int(line["bytes"]) == len(created["StreamARN"]) + len('{"StreamARN":""}')

    try:
        kvs.describe_stream(StreamName="missing")
    except ClientError as e:
        failed = wait_for_line(server, e.response["ResponseMetadata"]["RequestId"])
    assert (failed["op"], failed["stream"], failed["status"]) == \
        ("DescribeStream", "missing", "404")

    start = int(time.time() * 1000) - 60_000
    acks = put_mkv(server.port, "logged", synthetic.to_mkv(h264, start))
    deadline = time.monotonic() + 5
    while not (puts := [x for x in access_lines(server).values() if x["op"] == "PutMedia"]):
        assert time.monotonic() < deadline, "no access line for the PutMedia"
        time.sleep(0.05)
    assert len(puts) == 1 and puts[0]["stream"] == "logged" and puts[0]["status"] == "200"
    ack_bytes = sum(len(json.dumps(a, separators=(",", ":"))) + 1 for a in acks)
    assert int(puts[0]["bytes"]) >= ack_bytes  # the acks (and any IDLE) went out


def test_off_by_default(start_server):
    server = start_server()
    server.client("kinesisvideo").list_streams()
    assert server.stop() == 0  # a clean exit has written every log line there was
    assert "kvslite listening" in server.output()
    assert "kvslite.access" not in server.output()
