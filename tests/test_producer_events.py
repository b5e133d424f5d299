"""Fragment events in the producer: `events=` / `kvslite put --event` mark fragments for AWS
image generation and notification with Tags elements just before the Cluster, laid out as
the AWS producer SDK's putKinesisVideoEventMetadata writes them.

Unit level: the exact bytes and their parse, the SDK's limits, the unmarked body unchanged,
the callable form, failover resends. End to end: `kvslite put --event` and a failover
through a relay against a real `kvslite serve`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_producer_failover import AckWithholdingRelay

from kvslite.cli import main
from kvslite.media.mkv import Cluster, MkvReader, StreamHeader, Tags
from kvslite.media.synthetic import encode_video, to_mkv
from kvslite.client.producer import (FragmentEvent, FragmentEventError, Producer, PutSummary,
                              SourceError, VideoFormat, every_nth_fragment, media_chunks)
from kvslite.client.producer.failover import FragmentFeed
from kvslite.client.producer.readahead import ReadAhead

START_MS = 1_700_000_000_000
FRAGMENT_MS = 400  # the clip's GOP: 10 frames at 25 fps
NOTIFY = "AWS_KINESISVIDEO_NOTIFICATION"
IMAGES = "AWS_KINESISVIDEO_IMAGE_GENERATION"
PREFIX = "AWS_KINESISVIDEO_IMAGE_PREFIX"


@pytest.fixture(scope="module")
def clip():
    # 2 s, GOP 10 at 25 fps: 5 fragments of 400 ms, 10 frames each.
    return encode_video("h264", width=160, height=120, fps=25, seconds=2.0, gop=10, bframes=2)


def video(clip) -> VideoFormat:
    return VideoFormat("h264", clip.codec_private, 160, 120, 25)


def chunks(clip, **kwargs) -> list:
    return list(media_chunks(clip.packets, video(clip), start_ms=START_MS, **kwargs))


# ----------------------------------------------------------------------------- the bytes

def ebml(element_id: int, payload: bytes) -> bytes:
    """An EBML element written by hand: its ID's bytes, a 1- or 2-byte size, the payload."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 0x7F else (0x4000 | n).to_bytes(2, "big")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + payload


def tags_element(*pairs: tuple[str, str]) -> bytes:
    """Tags > Tag > (empty Targets, one sibling SimpleTag per pair)."""
    simple_tags = b"".join(ebml(0x67C8, ebml(0x45A3, name.encode()) + ebml(0x4487, value.encode()))
                           for name, value in pairs)
    return ebml(0x1254C367, ebml(0x7373, ebml(0x63C0, b"") + simple_tags))


EVENT_LAYOUTS = {
    "notification": (
        FragmentEvent(notification=True),
        [[(NOTIFY, "")]]),
    "image generation": (
        FragmentEvent(image_generation=True),
        [[(IMAGES, "")]]),
    "notification with pairs": (
        FragmentEvent(notification=True, metadata={"camera": "front", "zone": "door"}),
        [[(NOTIFY, ""), ("camera", "front"), ("zone", "door")]]),
    "both, prefix and pairs": (
        FragmentEvent(image_generation=True, notification=True, image_prefix="doorbell/",
                      metadata={"camera": "front", "zone": "door"}),
        [[(NOTIFY, ""), ("camera", "front"), ("zone", "door")],
         [(IMAGES, ""), (PREFIX, "doorbell/"), ("camera", "front"), ("zone", "door")]]),
}


@pytest.mark.parametrize("case", list(EVENT_LAYOUTS))
def test_marked_fragment_bytes_and_parse(case, clip):
    event, groups = EVENT_LAYOUTS[case]
    expected_tags = b"".join(tags_element(*group) for group in groups)
    assert event.tag_groups() == groups
    assert event.mkv_tags() == expected_tags

    plain, marked = chunks(clip), chunks(clip, events=event)
    assert marked[0].data == plain[0].data and marked[0].event is None  # the header: as is
    assert len(marked) == len(plain) == 6
    for before, after in zip(plain[1:], marked[1:]):  # every cluster: the Tags, then it
        assert after.data == expected_tags + before.data
        assert after.data[len(expected_tags):][:4] == bytes.fromhex("1F43B675")  # Cluster ID
        assert (after.timecode, after.frames, after.event) == (before.timecode, 10, event)

    reader = MkvReader()
    parsed = reader.feed(b"".join(c.data for c in marked)) + reader.close()
    kinds = [type(e).__name__ for e in parsed]
    assert kinds == ["StreamHeader"] + (["Tags"] * len(groups) + ["Cluster"]) * 5
    assert [e.tags for e in parsed[1:1 + len(groups)]] == groups
    clusters = [e for e in parsed if isinstance(e, Cluster)]
    assert [c.timecode for c in clusters] == [START_MS + FRAGMENT_MS * k for k in range(5)]
    assert isinstance(parsed[0], StreamHeader) and isinstance(parsed[1], Tags)


def test_metadata_order_is_kept_and_the_dict_copied():
    pairs = {f"k{i}": f"v{i}" for i in (3, 1, 2)}
    event = FragmentEvent(notification=True, metadata=pairs)
    pairs["k9"] = "later"  # the event keeps its own copy
    assert event.tag_groups() == [[(NOTIFY, ""), ("k3", "v3"), ("k1", "v1"), ("k2", "v2")]]
    assert event == FragmentEvent(notification=True, metadata={"k3": "v3", "k1": "v1",
                                                                "k2": "v2"})
    assert isinstance(hash(event), int)  # frozen, so hashable
    with pytest.raises(AttributeError):
        event.notification = False


# ----------------------------------------------------------------------------- the limits

LIMITS = [
    (dict(), "a FragmentEvent needs image_generation or notification (or both)"),
    (dict(notification=True, metadata={f"k{i}": "v" for i in range(11)}),
     "at most 10 metadata pairs, got 11"),
    (dict(notification=True, metadata={"": "v"}),
     "metadata name '' is 0 bytes long, not 1 to 128 (UTF-8)"),
    (dict(notification=True, metadata={"é" * 65: "v"}),
     f"metadata name {'é' * 65!r} is 130 bytes long, not 1 to 128 (UTF-8)"),
    (dict(notification=True, metadata={"AWS_CAMERA": "v"}),
     "metadata name 'AWS_CAMERA' starts with 'AWS', which is reserved"),
    (dict(notification=True, metadata={"k": "é" * 129}),
     "the value of metadata 'k' is 258 bytes long, more than 256 (UTF-8)"),
    (dict(notification=True, metadata={"k": 5}),
     "metadata names and values must be strings: 'k': 5"),
    (dict(image_generation=True, image_prefix="p" * 257),
     "image_prefix is 257 bytes long, more than 256 (UTF-8)"),
    (dict(image_generation=True, image_prefix="AWSimages/"),
     "image_prefix 'AWSimages/' starts with 'AWS', which is reserved"),
    (dict(image_generation=True, image_prefix=""),
     "image_prefix is empty (None for no prefix)"),
    (dict(notification=True, image_prefix="images/"),
     "image_prefix applies to image generation only: set image_generation too"),
]


@pytest.mark.parametrize("kwargs, message", LIMITS)
def test_limits_are_refused(kwargs, message):
    with pytest.raises(FragmentEventError) as err:
        FragmentEvent(**kwargs)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError) and isinstance(err.value, SourceError)


def test_limits_are_inclusive():
    metadata = {f"k{i}": "v" * 256 for i in range(9)} | {"é" * 64: "é" * 128}  # 10 pairs
    event = FragmentEvent(image_generation=True, image_prefix="é" * 128, metadata=metadata)
    assert len(event.tag_groups()[0]) == 2 + 10  # the event's tag, the prefix, the pairs


def test_a_bad_events_argument_fails_before_connecting(clip):
    producer = Producer("nowhere", endpoint_url="http://127.0.0.1:1",
                        data_endpoint="http://127.0.0.1:1", region="us-east-1",
                        credentials=("AKIDEXAMPLE", "secret"), max_retries=0)
    with pytest.raises(TypeError) as err:
        producer.put(clip.packets, video(clip), events="notification")
    assert str(err.value) == ("events must be a FragmentEvent, a function (index, timecode_ms)"
                              " -> FragmentEvent | None, or None; not str")
    with pytest.raises(SourceError) as err:
        chunks(clip, events=lambda index, timecode_ms: "notification")
    assert str(err.value) == "events returned 'notification' for fragment 0, not a " \
                             "FragmentEvent or None"


# ----------------------------------------------------------------------------- the body

def test_no_events_leaves_the_body_byte_identical(clip):
    plain = chunks(clip)
    for same in (chunks(clip, events=None), chunks(clip, events=lambda i, t: None)):
        assert [c.data for c in same] == [c.data for c in plain]
        assert [c.event for c in same] == [None] * 6
    assert all(b"AWS_KINESISVIDEO" not in c.data for c in plain)


def test_the_callable_marks_exactly_the_fragments_it_returns_an_event_for(clip):
    event = FragmentEvent(notification=True, metadata={"motion": "yes"})
    calls = []

    def on_motion(index: int, timecode_ms: int):
        calls.append((index, timecode_ms))
        return event if index in (1, 3) else None

    plain, marked = chunks(clip), chunks(clip, events=on_motion)
    assert calls == [(k, START_MS + FRAGMENT_MS * k) for k in range(5)]
    assert [c.event for c in marked[1:]] == [None, event, None, event, None]
    for k, (before, after) in enumerate(zip(plain[1:], marked[1:])):
        tags = event.mkv_tags() if k in (1, 3) else b""
        assert after.data == tags + before.data


def test_every_nth_fragment(clip):
    event = FragmentEvent(image_generation=True)
    marked = chunks(clip, events=every_nth_fragment(event, 2))
    assert [c.event for c in marked[1:]] == [event, None, event, None, event]
    assert [c.event for c in chunks(clip, events=every_nth_fragment(event, 1))[1:]] == \
        [event] * 5
    with pytest.raises(ValueError, match="n must be at least 1, not 0"):
        every_nth_fragment(event, 0)


def test_a_failover_resend_repeats_the_tags_with_the_cluster(clip):
    event = FragmentEvent(image_generation=True, notification=True, metadata={"a": "b"})
    plain = chunks(clip)

    async def sent_then_resent():
        body = media_chunks(clip.packets, video(clip), start_ms=START_MS, events=event)
        feed = FragmentFeed(ReadAhead(body))
        try:
            first = [(await feed.next())[0] for _ in range(4)]  # the header, 3 clusters
            feed.acked(START_MS)  # the first fragment is acknowledged; two are not
            feed.restart()
            again = [await feed.next() for _ in range(3)]
            return first, again
        finally:
            feed.close()

    first, again = asyncio.run(sent_then_resent())
    assert [resent for _, resent in again] == [True, True, True]
    assert [c for c, _ in again] == [first[0], first[2], first[3]]  # the header, unacked
    for k, (chunk, _) in enumerate(again[1:], start=1):
        assert chunk.data == event.mkv_tags() + plain[1 + k].data
        assert chunk.event is event


def test_summary_line_mentions_marked_fragments_only_when_some_are():
    summary = PutSummary(stream="s", fragments_persisted=5, frames_sent=50)
    assert "marked" not in summary.line()
    summary.fragments_marked = 1
    assert summary.line().startswith("s: 5 fragments persisted, 50 frames, 0.00 MB in 0.00 s, "
                                     "1 fragment marked for events")
    summary.fragments_marked = 3
    assert ", 3 fragments marked for events" in summary.line()


# ----------------------------------------------------------------------------- end to end

def put_cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_DEFAULT_REGION": "us-east-1", "KVSLITE_ENDPOINT_URL": server.endpoint}
    return subprocess.run([sys.executable, "-m", "kvslite", "put", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def listed(server, stream: str) -> list[dict]:
    fragments = server.client("kinesis-video-archived-media").list_fragments(
        StreamName=stream)["Fragments"]
    return sorted(fragments, key=lambda f: f["ProducerTimestamp"])


@pytest.mark.slow
def test_put_cli_marks_every_nth_fragment(shared_server, clip, tmp_path):
    source = tmp_path / "doorbell.mkv"
    source.write_bytes(to_mkv(clip, 0))
    result = put_cli(shared_server, "events-cli", str(source), "--create", "-q",
                     "--start-timestamp", str(START_MS // 1000), "--event", "notification",
                     "--meta", "a=b", "--event-every", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("put events-cli: 5 fragments persisted, 50 frames, ")
    assert ", 3 fragments marked for events," in result.stdout  # fragments 0, 2 and 4
    fragments = listed(shared_server, "events-cli")
    assert [round(f["ProducerTimestamp"].timestamp() * 1000) for f in fragments] == \
        [START_MS + FRAGMENT_MS * k for k in range(5)]


def test_failover_resends_marked_fragments_and_counts_them_once(shared_server, clip):
    shared_server.client("kinesisvideo").create_stream(StreamName="events-failover",
                                                       DataRetentionInHours=1)
    relay = AckWithholdingRelay(shared_server.port)
    try:
        producer = Producer("events-failover", endpoint_url=shared_server.endpoint,
                            region="us-east-1", credentials=("AKIDEXAMPLE", "secret"),
                            data_endpoint=relay.endpoint)
        summary = producer.put(clip.packets, video(clip), start_timestamp=START_MS,
                               events=FragmentEvent(image_generation=True, notification=True,
                                                    metadata={"camera": "front"}))
    finally:
        relay.close()
    assert relay.put_media_connections == 2 and summary.retries == 1
    assert summary.fragments_resent >= 2
    assert (summary.fragments_sent, summary.fragments_marked, summary.fragments_persisted) == \
        (5, 5, 5)
    assert len(listed(shared_server, "events-failover")) == 5  # stored once each


def cli_error(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["put", "s", "missing.mp4", *args])
    return result.exit_code, result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["--meta", "a=b"], "Error: --meta needs --event"),
    (["--image-prefix", "images/"], "Error: --image-prefix needs --event"),
    (["--event-every", "2"], "Error: --event-every needs --event"),
    (["--event", "motion"], "Error: Invalid value for --event: 'motion' is not one of "
                            "image-generation, notification (comma-separated)"),
    (["--event", ","], "Error: Invalid value for --event: give one or more of "
                       "image-generation, notification (comma-separated)"),
    (["--event", "notification", "--meta", "ab"],
     "Error: Invalid value for --meta: expected KEY=VALUE, got 'ab'"),
    (["--event", "notification", "--meta", "a=1", "--meta", "a=2"],
     "Error: Invalid value for --meta: 'a' given twice"),
    (["--event", "notification", "--meta", "AWS_X=1"],
     "Error: Invalid value for --meta: metadata name 'AWS_X' starts with 'AWS', which is "
     "reserved"),
    (["--event", "notification", "--image-prefix", "images/"],
     "Error: Invalid value for --image-prefix: applies to --event image-generation only"),
    (["--event", "image-generation", "--image-prefix", "AWS/"],
     "Error: Invalid value for --image-prefix: image_prefix 'AWS/' starts with 'AWS', which "
     "is reserved"),
    (["--event", "notification", "--event-every", "0"],
     "Error: Invalid value for '--event-every': 0 is not in the range x>=1."),
])
def test_put_cli_usage_errors(args, message):
    assert cli_error(*args) == (2, message)
