"""Hostile input at the edge: whatever a client sends, kvslite answers with an AWS error.

- A deterministic fuzz suite posts malformed bodies to every operation of the three
  botocore models (random JSON, wrong types for real member names, extreme numbers, lone
  surrogates, bytes that are not JSON or not UTF-8): never a 5xx (unimplemented
  operations aside), always `x-amzn-ErrorType` and a JSON `message`, never a traceback.
  A systematic sweep then makes each member of each operation hostile in turn, inside an
  otherwise valid request on a stream with media, so the handlers themselves are reached.
- Explicit cases: huge and deeply nested JSON, out-of-range timestamps and integers,
  lone surrogates, an absurd PutMedia producer start timestamp.
- Session tokens are strict, and playlists/manifests never echo request text.
- Every response carries `nosniff` and a Content-Security-Policy.
- SigV4 covers the body: a declared payload hash must match it; `host` must be signed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import re
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvs_media import PutMediaConnection, put_mkv, sign_v4

from kvslite.server.edge import model
from kvslite.media import synthetic

ROUTES = model.routes()
FUZZ_STREAM = "fuzz-stream"  # exists, without media: fuzzed requests can reach handlers
EXPENDABLE_STREAM = "fuzz-by-arn"  # the fuzz knows its ARN (DeleteStream may delete it)
MEDIA_STREAM = "hostile-media"  # has fragments: fuzzed requests reach the media code
MEDIA_START_MS = (int(time.time()) - 3600) * 1000
TARGET_STREAM = "hostile-target"  # for the explicit cases; the fuzz never names it
MARKER = "KVSLITEINJECTED"
SERVER_ERRORS_ALLOWED = {501: "NotImplementedException"}  # operations kvslite lacks


# -- raw HTTP --------------------------------------------------------------------------


class Wire:
    """One kept-alive HTTP/1.1 connection to the server, reopened when it closes."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict | None = None, *, read_success: bool = True):
        """(status, lower-cased headers, body). A successful response is read only when
        `read_success` (GetMedia streams for seconds: its connection is dropped instead)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            head = {k.lower(): v for k, v in response.getheaders()}
            if response.status >= 400 or read_success:
                payload = response.read()
            else:
                payload = b""
                self.close()
                return response.status, head, payload
            if response.will_close:
                self.close()
            return response.status, head, payload
        except Exception:
            self.close()
            raise

    def post(self, path: str, body: bytes, **kwargs):
        return self.request("POST", path, body, {"content-type": "application/json"},
                            **kwargs)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def assert_aws_answer(status: int, headers: dict, body: bytes, what: str = "") -> None:
    """What every answer to a hostile request must look like."""
    code = headers.get("x-amzn-errortype")
    assert status < 500 or SERVER_ERRORS_ALLOWED.get(status) == code, \
        (what, status, code, body[:300])
    if status >= 400:
        assert headers.get("x-amzn-errortype"), (what, status, body[:300])
        assert headers.get("content-type", "").startswith("application/json"), what
        decoded = json.loads(body)
        assert isinstance(decoded, dict) and isinstance(decoded.get("message"), str), \
            (what, body[:300])
    assert b"Traceback" not in body, what


def assert_error(result, status: int, code: str) -> str:
    got_status, headers, body = result
    assert (got_status, headers.get("x-amzn-errortype")) == (status, code), body[:300]
    assert_aws_answer(*result)
    return json.loads(body)["message"]


def log_mark(server) -> int:
    return len(server.output())


def assert_no_traceback(server, since: int) -> None:
    """Nothing the server logged since `since` (a log_mark) is a traceback."""
    output = server.output()[since:]
    assert "Traceback" not in output, output[-3000:]


def as_json(value) -> bytes:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, NaN/Infinity as literals
    return json.dumps(value).encode()


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(shared_server):
    """The one server the whole suite below (fuzz included) runs against."""
    kvs = shared_server.client("kinesisvideo")
    for name in (FUZZ_STREAM, EXPENDABLE_STREAM, TARGET_STREAM):
        kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    arn = kvs.describe_stream(StreamName=EXPENDABLE_STREAM)["StreamInfo"]["StreamARN"]
    KNOWN["arn"] = [arn]
    return shared_server


@pytest.fixture(scope="module")
def wire(server):
    connection = Wire(server.port)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def media(server):
    """MEDIA_STREAM with 2 s of H.264 in two fragments (producer timestamps an hour ago)."""
    server.client("kinesisvideo").create_stream(StreamName=MEDIA_STREAM,
                                                DataRetentionInHours=24)
    video = synthetic.encode_video("h264", seconds=2, gop=25)
    acks = put_mkv(server.port, MEDIA_STREAM, synthetic.to_mkv(video, MEDIA_START_MS))
    assert [a["EventType"] for a in acks].count("PERSISTED") == 2, acks
    archived = server.client("kinesis-video-archived-media")
    KNOWN["fragment"] = [f["FragmentNumber"] for f in
                         archived.list_fragments(StreamName=MEDIA_STREAM)["Fragments"]]
    return MEDIA_STREAM


@pytest.fixture(scope="module")
def implemented() -> set[str]:
    """Operations the assembled server serves; the rest answer 501 by design."""
    import tempfile
    from pathlib import Path

    from kvslite.server.config import Settings
    from kvslite.server.main import build

    with tempfile.TemporaryDirectory() as data_dir:
        built = build(Settings(data_dir=Path(data_dir)))
        try:
            return set(built.app.handlers)
        finally:
            built.close()


# -- strategies ------------------------------------------------------------------------

LONE_SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
EXTREME_INTS = [0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1,
                2**64, 2**70, -(2**70), 10**300, -(10**300)]
EXTREME_FLOATS = [1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 0.5,
                  math.nan, math.inf, -math.inf, 253402300800.0, -1.0]
NAME_POOL = [FUZZ_STREAM, "", "a", "no-such-stream", "x" * 256, "x" * 257,
             f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/{FUZZ_STREAM}/1",
             "91343852333181432392682062607743920146264380928",
             "9999-12-31T23:59:59Z", "0001-01-01T00:00:00", "1e308", "NaN", "\x00",
             "../../etc/passwd", "<script>", "%0A#EXT-X-ENDLIST"]
# Filled in by the fixtures once the server holds them: a real ARN and fragment numbers
# let fuzzed requests get past "not found" into the handlers. Only EXPENDABLE_STREAM's
# ARN is known: DeleteStream needs nothing more, and the other streams must stay.
KNOWN: dict[str, list] = {"arn": [], "fragment": []}

texts = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.characters(), st.sampled_from(LONE_SURROGATES)),
             max_size=8).map("".join),
    st.integers(min_value=300, max_value=5000).map(lambda n: "z" * n),
    st.sampled_from(NAME_POOL),
)
ints = st.one_of(st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
                 st.sampled_from(EXTREME_INTS))
floats = st.one_of(st.floats(), st.sampled_from(EXTREME_FLOATS))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
any_json = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
timestamps = st.one_of(floats, ints, st.sampled_from(
    ["2024-01-01T00:00:00Z", "9999-12-31T23:59:59", "10000-01-01T00:00:00",
     "0001-01-01T00:00:00", "1969-12-31T23:59:59+00:00", "2024-13-45T99:99:99"]))


def known(kind: str, fallback: str):
    """A value the server holds, looked up when drawn (after the fixtures ran)."""
    return st.deferred(lambda: st.sampled_from(KNOWN[kind] or [fallback]))


# Plausible strings for members with a pattern; each member gets those its pattern and
# length limits accept (checked with the model's own regex engine).
PLAUSIBLE = ["fuzz", "1", "abc123", "video/h264", "us-west-2", "owner", "JPEGQuality", "90",
             "AAAA", "https://example.com/x", "0 0/5 * * * ? *", "key", "",
             f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/{FUZZ_STREAM}/1",
             "arn:aws:iot:us-east-1:000000000000:thing/fuzz",
             "arn:aws:secretsmanager:us-east-1:000000000000:secret:fuzz"]


def valid(shape, name: str = "", depth: int = 0):
    """Values the model accepts for `shape` (mostly: names and ARNs may not exist)."""
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure":
        if depth > 5:
            return st.just({})
        members = {n: valid(m, n, depth + 1) for n, m in shape.members.items()}
        required = {n: v for n, v in members.items() if n in shape.required_members}
        return st.fixed_dictionaries(required, optional={
            n: v for n, v in members.items() if n not in required})
    if kind == "list":
        low = meta.get("min", 0)
        return st.lists(valid(shape.member, name, depth + 1), min_size=low,
                        max_size=max(low, min(meta.get("max", 4), 4)))
    if kind == "map":
        low = meta.get("min", 0)
        return st.dictionaries(valid(shape.key, "", depth + 1),
                               valid(shape.value, "", depth + 1), min_size=low,
                               max_size=max(low, min(meta.get("max", 4), 4)))
    if kind == "string":
        if shape.enum:
            return st.sampled_from(shape.enum)
        if name in ("StreamName", "ComparisonValue"):
            return st.sampled_from([FUZZ_STREAM, MEDIA_STREAM, "no-such-stream"])
        if name in ("StreamARN", "ResourceARN"):
            return known("arn", PLAUSIBLE[-3])
        if shape.name in ("FragmentNumberString", "ContinuationToken"):
            return known("fragment", "1")
        pattern = model._compiled(meta.get("pattern", ".*"))
        low, high = meta.get("min", 0), meta.get("max", 10**6)
        fits = [p for p in PLAUSIBLE if low <= len(p) <= high and pattern.fullmatch(p)]
        return st.sampled_from(fits or ["a" * max(low, 1)])
    if kind in ("integer", "long"):
        low = meta.get("min", 0)
        high = meta.get("max", max(low, 100_000))
        return st.one_of(st.integers(low, high), st.sampled_from([low, high]))
    if kind in ("float", "double"):
        return st.floats(meta.get("min", 0), meta.get("max", 1e6))
    if kind == "timestamp":
        near = MEDIA_START_MS / 1000
        return st.one_of(st.floats(near - 5, near + 5), st.integers(0, 253_402_300_799))
    if kind == "boolean":
        return st.booleans()
    return st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode())  # blob


def hostile(shape, name: str = ""):
    """A value the model (or a careless handler) should choke on."""
    choices = [any_json, ints, floats, texts, st.none()]
    if shape.type_name == "string":
        choices.append(valid(shape, name).map(lambda s: s + "\ud800"))
        choices.append(valid(shape, name).map(lambda s: s * 300))
    if shape.type_name == "timestamp":
        choices.append(timestamps)
    return st.one_of(*choices)


def nearly_valid(shape, depth: int = 0):
    """A valid request with one member, at any depth, made hostile."""
    if shape.type_name != "structure" or not shape.members or depth > 4:
        return hostile(shape)

    def mutate(value: dict):
        def replace(name: str):
            member = shape.members[name]
            return st.one_of(hostile(member, name), nearly_valid(member, depth + 1)).map(
                lambda new: {**value, name: new})
        return st.sampled_from(sorted(shape.members)).flatmap(replace)

    return valid(shape, depth=depth).flatmap(mutate)


def for_shape(shape, depth: int = 0):
    """Real member names all the way down, each value well-typed or any JSON at all."""
    if depth > 5:
        return any_json
    kind = shape.type_name
    if kind == "structure":
        right = st.fixed_dictionaries(
            {}, optional={name: for_shape(member, depth + 1)
                          for name, member in shape.members.items()})
    elif kind == "list":
        right = st.lists(for_shape(shape.member, depth + 1), max_size=4)
    elif kind == "map":
        keys = texts if not shape.key.enum else st.one_of(st.sampled_from(shape.key.enum),
                                                          texts)
        right = st.dictionaries(keys, for_shape(shape.value, depth + 1), max_size=4)
    else:
        right = hostile(shape)
    return st.one_of(right, any_json)


RAW_BODIES = [
    b"\xff\xfe\x00", b'{"StreamName": "\xc3\x28"}', b'{"StreamName": "\xed\xa0\x80"}',
    b"\xef\xbb\xbf{}", b"{", b"}", b"[", b"nul", b"null", b"true", b"0", b'""', b"\x00" * 8,
    b'{"a":1e999999}', b'{"MaxResults": -Infinity}', b'{"MaxResults": NaN}',
    b'{"StreamName": "\\ud800"}', b'{"StreamName": "\\udc00\\ud800"}', b'{"a": "\\u00"}',
    b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"StreamName":"' + FUZZ_STREAM.encode() + b'","StreamName":1}',
    b'{"DataRetentionInHours": ' + b"9" * 4301 + b"}",
]


def bodies(operation):
    shape = operation.input_shape
    if shape is None:
        json_values = any_json
    else:
        json_values = st.one_of(nearly_valid(shape), nearly_valid(shape), valid(shape),
                                for_shape(shape), any_json)
    return st.one_of(json_values.map(as_json), json_values.map(as_json),
                     st.binary(max_size=48), st.sampled_from(RAW_BODIES))


FUZZ = settings(max_examples=120, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), print_blob=False)


# -- 1. fuzz every operation -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(ROUTES), ids=lambda p: ROUTES[p].name)
def test_fuzzed_bodies_get_aws_errors(server, wire, media, implemented, path):
    log_start = log_mark(server)
    route = ROUTES[path]
    streams = route.name == "GetMedia"  # a 200 GetMedia follows the stream for seconds

    @FUZZ
    @given(body=bodies(route.operation))
    def post(body: bytes) -> None:
        status, headers, payload = wire.post(path, body, read_success=not streams)
        assert_aws_answer(status, headers, payload, f"{route.name} {body[:200]!r}")
        if status == 501:
            assert route.name not in implemented, payload

    post()
    assert_no_traceback(server, log_start)


# -- 1. every member of every served operation, made hostile one at a time --------------

# Deterministic and exhaustive where the fuzz above is random: a request that is valid
# (naming MEDIA_STREAM, so handlers do real work) except for one member, at any depth.
HOSTILE_VALUES = [None, True, -1, 0, 2**31, 2**63, 2**70, -(2**70), 10**300, 1e308, -1e308,
                  5e-324, math.nan, math.inf, -math.inf, "", "\ud800", "\udc00x", "x" * 5000,
                  "9999-12-31T23:59:59Z", "10000-01-01T00:00:00", "1969-12-31T23:59:59Z",
                  [], [[[None]]], {}, {"a": {"b": [1]}}]
# Baseline values where the first enum value or the smallest number would stop a request
# before its handler reaches the interesting part.
BASELINE = {"StartSelectorType": "PRODUCER_TIMESTAMP", "SamplingInterval": 3000,
            "MaxResults": 10, "WidthPixels": 64, "HeightPixels": 48, "Expires": 300,
            "PlaybackMode": "ON_DEMAND", "DataRetentionInHours": 1}


def baseline(shape, name: str = "", operation: str = ""):
    kind = shape.type_name
    if name in BASELINE and kind != "structure":
        return BASELINE[name]
    if kind == "structure":
        return {n: baseline(m, n, operation) for n, m in shape.members.items()
                if n in shape.required_members or (n == "StreamName" and not name)}
    if kind == "list":
        return [baseline(shape.member, name, operation)
                for _ in range(shape.metadata.get("min", 0))]
    if kind == "map":
        return {"k": baseline(shape.value)} if shape.metadata.get("min", 0) else {}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        if name == "StreamName":
            return f"swept-{next(SWEPT)}" if operation == "CreateStream" else MEDIA_STREAM
        if shape.name in ("FragmentNumberString", "ContinuationToken") and KNOWN["fragment"]:
            return KNOWN["fragment"][0]
        pattern = model._compiled(shape.metadata.get("pattern", ".*"))
        low, high = shape.metadata.get("min", 0), shape.metadata.get("max", 10**6)
        return next((p for p in PLAUSIBLE if low <= len(p) <= high and pattern.fullmatch(p)),
                    "a" * max(low, 1))
    if kind in ("integer", "long", "float", "double"):
        return max(shape.metadata.get("min", 1), 1)
    if kind == "timestamp":
        return MEDIA_START_MS / 1000 + (2 if name.startswith("End") else 0)
    if kind == "boolean":
        return False
    return "AAAA"  # blob


SWEPT = iter(range(10**9))


def member_paths(shape, prefix: tuple = (), depth: int = 0):
    """(path, shape) of every member below `shape`; list items as index 0, map values
    under the key "k"."""
    if depth > 6:
        return
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            yield (*prefix, name), member
            yield from member_paths(member, (*prefix, name), depth + 1)
    elif shape.type_name == "list":
        yield (*prefix, 0), shape.member
        yield from member_paths(shape.member, (*prefix, 0), depth + 1)
    elif shape.type_name == "map":
        yield (*prefix, "k"), shape.value
        yield from member_paths(shape.value, (*prefix, "k"), depth + 1)


def with_member(body: dict, shape, path: tuple, value, operation: str):
    """`body` with the member at `path` set to `value`, its parents made up as needed."""
    body = json.loads(json.dumps(body))
    node, node_shape = body, shape
    for i, step in enumerate(path):
        last = i == len(path) - 1
        if node_shape.type_name == "structure":
            child_shape = node_shape.members[step]
        elif node_shape.type_name == "list":
            child_shape = node_shape.member
            if not node:
                node.append(baseline(child_shape, "", operation))
        else:
            child_shape = node_shape.value
        if last:
            node[step] = value
        else:
            if node_shape.type_name != "list" and step not in node:
                node[step] = baseline(child_shape, str(step), operation)
            node, node_shape = node[step], child_shape
    return body


def hostile_values_for(current) -> list:
    values = list(HOSTILE_VALUES)
    if isinstance(current, str):
        values += [current + "\ud800", current * 300, " " + current]
    return values


@pytest.mark.parametrize("path", sorted(ROUTES), ids=lambda p: ROUTES[p].name)
def test_each_member_made_hostile(server, wire, media, implemented, path):
    log_start = log_mark(server)
    route = ROUTES[path]
    shape = route.operation.input_shape
    for member_path, member_shape in member_paths(shape):
        for value in hostile_values_for(baseline(member_shape, str(member_path[-1]))):
            body = with_member(baseline(shape, operation=route.name), shape, member_path,
                               value, route.name)
            status, headers, payload = wire.post(path, as_json(body),
                                                 read_success=route.name != "GetMedia")
            assert_aws_answer(status, headers, payload, f"{route.name} {body!r:.300}")
            if route.name not in implemented:  # refused before its body is read
                assert status == 501
                break
            assert status < 500, (route.name, member_path, value, payload[:300])
    assert_no_traceback(server, log_start)


# -- 1. explicit hostile cases ---------------------------------------------------------


def test_integer_of_5000_digits(server, wire):
    log_start = log_mark(server)
    body = b'{"StreamName": "big-int", "DataRetentionInHours": ' + b"7" * 5000 + b"}"
    assert_error(wire.post("/createStream", body), 400, "SerializationException")
    assert_no_traceback(server, log_start)


def test_arrays_nested_100000_deep(server, wire):
    log_start = log_mark(server)
    body = b"[" * 100_000 + b"]" * 100_000
    assert_error(wire.post("/createStream", body), 400, "SerializationException")
    body = b'{"StreamName": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(wire.post("/describeStream", body), 400, "SerializationException")
    assert_no_traceback(server, log_start)


@pytest.mark.parametrize("extreme", [1e308, -1e308])
def test_extreme_timestamps_in_get_images_and_list_fragments(server, wire, media, extreme):
    log_start = log_mark(server)
    get_images = {"StreamName": media, "ImageSelectorType": "PRODUCER_TIMESTAMP",
                  "StartTimestamp": extreme, "EndTimestamp": MEDIA_START_MS / 1000 + 2,
                  "SamplingInterval": 3000, "Format": "JPEG"}
    message = assert_error(wire.post("/getImages", as_json(get_images)), 400,
                           "InvalidArgumentException")
    assert "StartTimestamp" in message
    list_fragments = {"StreamName": media, "FragmentSelector": {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": extreme, "EndTimestamp": 1e308}}}
    message = assert_error(wire.post("/listFragments", as_json(list_fragments)), 400,
                           "InvalidArgumentException")
    assert "FragmentSelector.TimestampRange.StartTimestamp" in message
    assert_no_traceback(server, log_start)


def describe(wire, name: str) -> dict:
    status, _, body = wire.post("/describeStream", as_json({"StreamName": name}))
    assert status == 200, body
    return json.loads(body)["StreamInfo"]


def test_integers_past_their_wire_type(server, wire, media):
    """2**70 where the models say integer (32-bit) or long (64-bit): refused up front, and
    nothing about the stream changes."""
    log_start = log_mark(server)
    before = describe(wire, TARGET_STREAM)
    huge = 2**70
    images = {"StreamName": media, "ImageSelectorType": "PRODUCER_TIMESTAMP",
              "StartTimestamp": MEDIA_START_MS / 1000,
              "EndTimestamp": MEDIA_START_MS / 1000 + 2, "Format": "JPEG"}
    cases = [  # (path, body, the member the error must name)
        ("/createStream", {"StreamName": "too-long-retention", "DataRetentionInHours": huge},
         "DataRetentionInHours"),
        ("/updateDataRetention", {"StreamName": TARGET_STREAM,
                                  "CurrentVersion": before["Version"],
                                  "Operation": "INCREASE_DATA_RETENTION",
                                  "DataRetentionChangeInHours": huge},
         "DataRetentionChangeInHours"),
        ("/listStreams", {"MaxResults": huge}, "MaxResults"),
        ("/listFragments", {"StreamName": TARGET_STREAM, "MaxResults": huge}, "MaxResults"),
        ("/getImages", {**images, "SamplingInterval": 3000, "MaxResults": huge}, "MaxResults"),
        # no max in the model: only the wire type bounds it (it was accepted before)
        ("/getImages", {**images, "SamplingInterval": huge}, "SamplingInterval"),
    ]
    for path, body, member in cases:
        message = assert_error(wire.post(path, as_json(body)), 400,
                               "InvalidArgumentException")
        assert f"'{member}'" in message, message
    assert describe(wire, TARGET_STREAM) == before
    status, _, body = wire.post("/listStreams", b"{}")
    assert status == 200
    names = [s["StreamName"] for s in json.loads(body)["StreamInfoList"]]
    assert TARGET_STREAM in names and "too-long-retention" not in names
    assert_no_traceback(server, log_start)


@pytest.mark.parametrize("body", [
    b'{"StreamName": "bad\\ud800name"}',
    b'{"StreamName": "\\udfff"}',
], ids=["high", "low"])
def test_lone_surrogate_in_stream_name(server, wire, body):
    log_start = log_mark(server)
    for path in ("/describeStream", "/createStream"):
        message = assert_error(wire.post(path, body), 400, "InvalidArgumentException")
        assert "'StreamName'" in message, message
    assert_no_traceback(server, log_start)


def test_lone_surrogate_in_tag_value_and_in_free_text_members(server, wire):
    log_start = log_mark(server)
    tag = b'{"StreamName": "' + TARGET_STREAM.encode() + b'", "Tags": {"k": "v\\ud800"}}'
    message = assert_error(wire.post("/tagStream", tag), 400, "InvalidArgumentException")
    assert "'Tags.k'" in message, message
    key = b'{"StreamName": "' + TARGET_STREAM.encode() + b'", "Tags": {"\\udc00": "v"}}'
    assert_error(wire.post("/tagStream", key), 400, "InvalidArgumentException")
    # KmsKeyId's pattern is `.+`: only the Unicode check stands between it and the store
    kms = b'{"StreamName": "surrogate-kms", "KmsKeyId": "key\\ud800"}'
    message = assert_error(wire.post("/createStream", kms), 400, "InvalidArgumentException")
    assert "KmsKeyId" in message
    status, _, tags = wire.post("/listTagsForStream", as_json({"StreamName": TARGET_STREAM}))
    assert status == 200 and "k" not in json.loads(tags).get("Tags", {})
    assert_no_traceback(server, log_start)


def refused_put_media(server, stream: str | None, **kwargs) -> tuple[int, dict, bytes]:
    """Open a PutMedia the server refuses on its headers; no body is sent, so the answer
    cannot be lost to a reset from unread bytes."""
    conn = PutMediaConnection(server.port, stream, **kwargs)
    try:
        assert conn.closed.wait(10), "no answer to the PutMedia request"
        assert conn.status is not None, "the connection closed without an answer"
        return conn.status, conn.headers, conn.error_body
    finally:
        conn.close()


def test_put_media_producer_start_timestamp_of_450_digits(server, media):
    log_start = log_mark(server)
    status, headers, body = refused_put_media(server, media, start_timestamp="9" * 450)
    assert (status, headers.get("x-amzn-errortype")) == (400, "InvalidArgumentException"), body
    assert "message" in json.loads(body)
    assert_no_traceback(server, log_start)


# -- 2. session tokens -----------------------------------------------------------------


def session_urls(server, stream: str) -> tuple[str, str]:
    archived = server.client("kinesis-video-archived-media")
    selector = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
        "StartTimestamp": MEDIA_START_MS / 1000, "EndTimestamp": MEDIA_START_MS / 1000 + 3}}
    hls = archived.get_hls_streaming_session_url(
        StreamName=stream, PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=selector)["HLSStreamingSessionURL"]
    dash = archived.get_dash_streaming_session_url(
        StreamName=stream, PlaybackMode="ON_DEMAND",
        DASHFragmentSelector=selector)["DASHStreamingSessionURL"]
    return hls, dash


@pytest.fixture(scope="module")
def sessions(server, media):
    """{page path: valid token} for the master and media playlists and the DASH manifest."""
    hls, dash = session_urls(server, media)
    hls_token = urllib.parse.parse_qs(urllib.parse.urlsplit(hls).query)["SessionToken"][0]
    dash_token = urllib.parse.parse_qs(urllib.parse.urlsplit(dash).query)["SessionToken"][0]
    return {"/hls/v1/getHLSMasterPlaylist.m3u8": hls_token,
            "/hls/v1/getHLSMediaPlaylist.m3u8": hls_token,
            "/dash/v1/getDASHManifest.mpd": dash_token}


def respelled(token: str) -> str:
    """The same bytes under a different spelling: the last character's unused low bits
    set (only possible when the length leaves some)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = {2: 4, 3: 2}.get(len(token) % 4)
    if spare is None:
        return token + "A"  # a whole extra character instead
    index = alphabet.index(token[-1])
    return token[:-1] + alphabet[index | ((1 << spare) - 1)]


def hostile_tokens(token: str) -> dict[str, str]:
    """Query-string spellings (already percent-encoded) of tokens the server never issued."""
    inject = urllib.parse.quote(f"\n#EXT-X-{MARKER}:1\n", safe="")
    return {
        "padded-payload": f"{token}=={MARKER}",
        "padded-injection": f"{token}=={inject}",
        "injection": f"{token}{inject}",
        "xml-injection": f"{token}==%22%3E%3C{MARKER}%2F%3E",
        "pad-1": token + "=", "pad-2": token + "==", "pad-3": token + "===",
        "pad-encoded": token + "%3D%3D",
        "trailing-bang": token + "!!", "trailing-dot": f"{token}.{MARKER}",
        "trailing-space": token + "%20", "trailing-tilde": token + "~",
        "standard-alphabet": token.replace("-", "+").replace("_", "/") + "+/",
        "respelled": respelled(token),
    }


def get(wire, path_and_query: str):
    return wire.request("GET", path_and_query)


def test_session_pages_refuse_every_token_they_did_not_issue(server, wire, sessions):
    log_start = log_mark(server)
    for page, token in sessions.items():
        for name, hostile in hostile_tokens(token).items():
            result = get(wire, f"{page}?SessionToken={hostile}")
            assert result[0] == 403, (page, name, result[2][:300])
            assert_error(result, 403, "NotAuthorizedException")
            assert MARKER.encode() not in result[2], (page, name)
    assert_no_traceback(server, log_start)


def test_valid_tokens_still_play_and_pages_carry_only_issued_tokens(server, wire, sessions):
    for page, token in sessions.items():
        status, headers, body = get(wire, f"{page}?SessionToken={token}")
        assert status == 200, body[:300]
        text = body.decode()
        tokens = re.findall(r"SessionToken=([^&\"'\s<>]*)", text)
        assert tokens and set(tokens) == {token}, (page, text[:500])
    # segments named by the media playlist play too
    media = get(wire, f"/hls/v1/getHLSMediaPlaylist.m3u8?SessionToken="
                      f"{sessions['/hls/v1/getHLSMediaPlaylist.m3u8']}")[2].decode()
    segments = [line for line in media.splitlines() if line.startswith("getMP4MediaFragment")]
    assert len(segments) == 2
    status, headers, body = get(wire, f"/hls/v1/{segments[0]}")
    assert status == 200 and headers["content-type"] == "video/mp4" and body[4:8] in (
        b"styp", b"moof")


def test_request_text_never_reaches_a_playlist(server, wire, sessions):
    """Extra or repeated query parameters next to a valid token: either the page, with only
    what the server issued, or a JSON error."""
    log_start = log_mark(server)
    inject = urllib.parse.quote(f"\n#EXT-X-{MARKER}\n<{MARKER}/>", safe="")
    for page, token in sessions.items():
        for query in (f"SessionToken={token}&FragmentNumber={inject}",
                      f"SessionToken={token}&X={inject}",
                      f"SessionToken={token}&SessionToken={token}{inject}",
                      f"SessionToken={token}{inject}&SessionToken={token}",
                      f"SessionToken={token}==%26X%3D{inject}"):
            status, headers, body = get(wire, f"{page}?{query}")
            assert status < 500, (page, query, body[:300])
            if status == 200:
                assert MARKER.encode() not in body, (page, query, body[:500])
            else:
                assert headers["content-type"].startswith("application/json"), (page, query)
                assert_aws_answer(status, headers, body, f"{page}?{query}")
    assert_no_traceback(server, log_start)


# -- 2. response headers ---------------------------------------------------------------


def assert_locked_down(headers: dict, what: str) -> None:
    assert headers.get("x-content-type-options") == "nosniff", (what, headers)
    policy = headers.get("content-security-policy")
    assert policy, (what, headers)
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy, (what, policy)


def test_every_page_is_nosniff_with_a_content_security_policy(server, wire, sessions, media):
    hls = sessions["/hls/v1/getHLSMediaPlaylist.m3u8"]
    dash = sessions["/dash/v1/getDASHManifest.mpd"]
    playlist = get(wire, f"/hls/v1/getHLSMediaPlaylist.m3u8?SessionToken={hls}")[2].decode()
    segment = next(line for line in playlist.splitlines()
                   if line.startswith("getMP4MediaFragment"))
    init = re.search(r'URI="([^"]+)"', playlist)[1]
    clip = as_json({"StreamName": media, "ClipFragmentSelector": {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
            "StartTimestamp": MEDIA_START_MS / 1000,
            "EndTimestamp": MEDIA_START_MS / 1000 + 2}}})
    pages = {  # what: (method, path, body, expected status)
        "master playlist": ("GET", f"/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={hls}",
                            b"", 200),
        "media playlist": ("GET", f"/hls/v1/getHLSMediaPlaylist.m3u8?SessionToken={hls}",
                           b"", 200),
        "init segment": ("GET", f"/hls/v1/{init}", b"", 200),
        "media segment": ("GET", f"/hls/v1/{segment}", b"", 200),
        "DASH manifest": ("GET", f"/dash/v1/getDASHManifest.mpd?SessionToken={dash}", b"", 200),
        "session error": ("GET", f"/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={hls}==",
                          b"", 403),
        "unknown session page": ("GET", "/hls/v1/nothing.html", b"", 404),
        "API answer": ("POST", "/listStreams", b"{}", 200),
        "API media answer": ("POST", "/getClip", clip, 200),
        "API error": ("POST", "/describeStream", b'{"StreamName": "nope"}', 404),
        "bad JSON": ("POST", "/describeStream", b"{", 400),
        "unknown path": ("POST", "/noSuchOperation", b"{}", 404),
        "wrong method": ("GET", "/describeStream", b"", 405),
        "not implemented": ("POST", "/describeEdgeConfiguration", b"{}", 501),
        "viewer asset": ("GET", "/web/limits.js", b"", 200),
    }
    for what, (method, path, body, expected) in pages.items():
        status, headers, _ = wire.request(method, path, body)
        assert status == expected, what
        assert_locked_down(headers, what)
    # PutMedia: its streaming answer (acks) and a refusal
    video = synthetic.encode_video("h264", seconds=1, gop=25)
    conn = PutMediaConnection(server.port, TARGET_STREAM)
    try:
        conn.send(synthetic.to_mkv(video, MEDIA_START_MS))
        conn.finish()
        assert "PERSISTED" in [a["EventType"] for a in conn.all_acks()]
        assert conn.status == 200
        assert_locked_down(conn.headers, "PutMedia acks")
    finally:
        conn.close()
    status, headers, _ = refused_put_media(server, media, timecode_type="NONSENSE")
    assert status == 400
    assert_locked_down(headers, "PutMedia error")


def test_web_viewer_page_keeps_its_own_policy(server, wire):
    from kvslite.server import web

    status, headers, body = wire.request("GET", "/")
    assert status == 200 and b"<html" in body.lower()
    assert headers["content-security-policy"] == web.CSP
    assert "'unsafe-inline'" not in web.CSP
    assert headers["x-content-type-options"] == "nosniff"


# -- 3. SigV4 covers the body ----------------------------------------------------------

KEY, SECRET, REGION = "AKIAHOSTILETEST", "hostile-test-secret", "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from conftest import ServerProcess

    secured = ServerProcess(tmp_path_factory.mktemp("hostile-sig") / "data",
                            "--access-key-id", KEY, "--secret-access-key", SECRET).start()
    yield secured
    secured.stop()


def signed(method: str, path: str, headers: dict, *, payload_hash: str,
           omit_from_signature: tuple[str, ...] = (), secret: str = SECRET) -> dict:
    """Signed now by the independent, spec-written signer; see kvs_media.sign_v4."""
    return sign_v4(method, path, headers, key=KEY, secret=secret, region=REGION,
                   payload_hash=payload_hash, omit=omit_from_signature)


def send(server, path: str, headers: dict, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


def json_headers(server) -> dict:
    return {"host": f"127.0.0.1:{server.port}", "content-type": "application/json"}


def body_hash_request(server, path: str, signed_body: bytes, sent_body: bytes,
                      *, declared: str | None = None):
    """Sign with x-amz-content-sha256 declaring `signed_body`'s hash (or `declared`)."""
    claimed = declared or hashlib.sha256(signed_body).hexdigest()
    headers = signed("POST", path, {**json_headers(server), "x-amz-content-sha256": claimed},
                     payload_hash=claimed)
    return send(server, path, headers, sent_body)


SIGNATURE_ERRORS = {"InvalidSignatureException", "IncompleteSignatureException",
                    "MissingAuthenticationTokenException", "UnrecognizedClientException"}


def test_declared_body_hash_must_be_the_body_on_every_json_route(secured):
    log_start = log_mark(secured)
    signed_body = b'{"StreamName": "the-signed-one"}'
    for path, route in ROUTES.items():
        result = body_hash_request(secured, path, signed_body, b'{"StreamName": "other"}')
        assert_error(result, 403, "InvalidSignatureException")
        # the same request with the body it declared gets past authentication
        _, headers, body = body_hash_request(secured, path, signed_body, signed_body)
        assert headers.get("x-amzn-errortype") not in SIGNATURE_ERRORS, (route.name, body)
    assert_no_traceback(secured, log_start)


@pytest.mark.parametrize("path,sent", [
    ("/createStream", b'{"StreamName": "swapped-body"}'),
    ("/tagStream", b'{"StreamName": "sig-target", "Tags": {"owner": "mallory"}}'),
    ("/getImages", (b'{"StreamName": "sig-target", "ImageSelectorType": "SERVER_TIMESTAMP", '
                    b'"StartTimestamp": 1, "EndTimestamp": 2, "Format": "PNG"}')),
    ("/listFragments", b'{"StreamName": "sig-target"}'),
])
def test_swapped_body_is_refused_and_has_no_effect(secured, path, sent):
    kvs = secured.client("kinesisvideo", key=KEY, secret=SECRET)
    if not kvs.list_streams(StreamNameCondition={"ComparisonOperator": "BEGINS_WITH",
                                                 "ComparisonValue": "sig-target"}
                            )["StreamInfoList"]:
        kvs.create_stream(StreamName="sig-target", DataRetentionInHours=1)
    result = body_hash_request(secured, path, b"{}", sent)
    assert_error(result, 403, "InvalidSignatureException")
    names = [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]]
    assert "swapped-body" not in names
    assert "owner" not in kvs.list_tags_for_stream(StreamName="sig-target").get("Tags", {})


def test_unsigned_payload_is_refused_on_json_routes(secured):
    for path in ("/createStream", "/listStreams", "/getImages"):
        result = body_hash_request(secured, path, b"", b'{"StreamName": "unsigned"}',
                                   declared="UNSIGNED-PAYLOAD")
        assert_error(result, 403, "InvalidSignatureException")
    kvs = secured.client("kinesisvideo", key=KEY, secret=SECRET)
    assert "unsigned" not in [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]]


def test_host_must_be_signed(secured):
    body = b"{}"
    headers = signed("POST", "/listStreams", json_headers(secured),
                     payload_hash=hashlib.sha256(body).hexdigest(),
                     omit_from_signature=("host",))
    assert "host" not in headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert_error(send(secured, "/listStreams", headers, body), 403,
                 "IncompleteSignatureException")


def test_correctly_signed_requests_still_work(secured):
    body = json.dumps({"StreamName": "body-hash-signed", "DataRetentionInHours": 1}).encode()
    # with the declared body hash
    status, _, payload = body_hash_request(secured, "/createStream", body, body)
    assert status == 200, payload
    # without the header: the signature covers the body as received
    body = json.dumps({"StreamName": "body-hash-signed"}).encode()
    headers = signed("POST", "/describeStream", json_headers(secured),
                     payload_hash=hashlib.sha256(body).hexdigest())
    status, _, payload = send(secured, "/describeStream", headers, body)
    assert status == 200 and json.loads(payload)["StreamInfo"]["Status"] == "ACTIVE"
    # boto3 with the right keys
    kvs = secured.client("kinesisvideo", key=KEY, secret=SECRET)
    assert kvs.describe_stream(StreamName="body-hash-signed")["StreamInfo"]["StreamName"] \
        == "body-hash-signed"


def test_producer_sdk_put_media_signature_still_works(secured):
    """The producer SDK signs the empty payload and sends no x-amz-content-sha256."""
    log_start = log_mark(secured)
    secured.client("kinesisvideo", key=KEY, secret=SECRET).create_stream(
        StreamName="hostile-signed-put", DataRetentionInHours=1)
    video = synthetic.encode_video("h264", seconds=1, gop=25)
    start_ms = (int(time.time()) - 60) * 1000
    base = {"host": "127.0.0.1", "connection": "keep-alive", "transfer-encoding": "chunked",
            "user-agent": "AWS-SDK-KVS-CPP-CLIENT/3.5.0",
            "x-amzn-fragment-acknowledgment-required": "1",
            "x-amzn-fragment-timecode-type": "ABSOLUTE",
            "x-amzn-producer-start-timestamp": f"{start_ms / 1000:.3f}",
            "x-amzn-stream-name": "hostile-signed-put"}

    conn = PutMediaConnection(secured.port, None, timecode_type=None, start_timestamp=None,
                              extra_headers=signed("POST", "/putMedia", base,
                                                   payload_hash=EMPTY_SHA256))
    try:
        conn.send(synthetic.to_mkv(video, start_ms))
        conn.finish()
        events = [a["EventType"] for a in conn.all_acks()]
    finally:
        conn.close()
    assert (conn.status, events) == (200, ["RECEIVED", "PERSISTED"])
    # declaring a payload it cannot have checked is refused
    lying = {**base, "x-amz-content-sha256": hashlib.sha256(b"media").hexdigest()}
    status, headers, _ = refused_put_media(
        secured, None, timecode_type=None, start_timestamp=None,
        extra_headers=signed("POST", "/putMedia", lying,
                             payload_hash=lying["x-amz-content-sha256"]))
    assert (status, headers.get("x-amzn-errortype")) == (403, "InvalidSignatureException")
    assert_no_traceback(secured, log_start)
