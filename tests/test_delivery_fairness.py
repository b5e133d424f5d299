"""Nothing one stream's destination does holds the other streams' deliveries hostage: a real
server, webhooks started here (one that never answers, one that always fails, one healthy),
real SeaweedFS, and MKV tagged as the AWS producer SDK tags it."""

from __future__ import annotations

import re
import select
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ServerProcess
from kvs_media import persisted_numbers, put_mkv, wait_until
from seaweed_server import REGION
from test_event_delivery import IMAGE, NOTIFY, START_MS, Webhook, image_config, notify_to, \
    tagged_mkv

from kvslite.server.delivery.scheduler import CLAIM_MS

pytestmark = pytest.mark.slow  # deliveries paced over seconds

SERVE_ARGS = ["--webhook-allow", "loopback"]  # the receivers here listen on 127.0.0.1
ALL_TAGGED = {index: [NOTIFY] for index in range(4)}  # the 4 s test video, every fragment


class Tarpit:
    """A webhook that reads each POST and never answers; records how long each sender
    held on before giving up, and the most held at once."""

    def __init__(self):
        self.held_s: list[float] = []  # per POST, once its sender hung up
        self.holding = 0
        self.most_at_once = 0
        self.closed = threading.Event()
        pit = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                began = time.monotonic()
                pit.holding += 1
                pit.most_at_once = max(pit.most_at_once, pit.holding)
                while not pit.closed.is_set():  # until the sender hangs up
                    readable, _, _ = select.select([self.connection], [], [], 0.1)
                    if readable and not self.connection.recv(1):
                        break
                pit.holding -= 1
                pit.held_s.append(time.monotonic() - began)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stuck"

    def close(self):
        self.closed.set()
        self.server.shutdown()


@pytest.fixture
def hooks():
    tarpit, healthy, failing = Tarpit(), Webhook(), Webhook()
    failing.fail = 10 ** 6  # answers 500, always
    yield tarpit, healthy, failing
    for hook in (tarpit, healthy, failing):
        (hook.close if hook is tarpit else hook.server.shutdown)()


def serve(tmp_path, *args: str, env: dict | None = None) -> ServerProcess:
    return ServerProcess(tmp_path / "data", *SERVE_ARGS, *args, env=env).start()


def put_tagged(server: ServerProcess, video, stream: str, fragments: int,
               tags: dict | None = None) -> list[str]:
    """`fragments` (a multiple of 4) tagged fragments, 4 per PutMedia; their numbers."""
    numbers = []
    for batch in range(fragments // 4):
        acks = put_mkv(server.port, stream, tagged_mkv(
            video, START_MS + 4000 * batch, tags or ALL_TAGGED))
        numbers += persisted_numbers(acks)
    return numbers


def metrics_text(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.endpoint}/metrics", timeout=5) as response:
        return response.read().decode()


def deliveries(kind: str, result: str) -> str:
    return f'kvslite_deliveries_total{{kind="{kind}",result="{result}"}}'


def test_a_tarpit_webhook_does_not_delay_another_streams_notification(tmp_path, hooks, h264):
    tarpit, healthy, _ = hooks
    server = serve(tmp_path)
    try:
        kvs = server.client("kinesisvideo")
        for name, hook in (("stuck", tarpit), ("fine", healthy)):
            kvs.create_stream(StreamName=name, DataRetentionInHours=1)
            notify_to(kvs, name, hook)
        stuck = put_tagged(server, h264, "stuck", 12)
        assert len(stuck) == 12
        wait_until(lambda: tarpit.holding == 1, timeout=10, what="a delivery in the tarpit")
        began = time.monotonic()
        fine = put_tagged(server, h264, "fine", 4, {2: [NOTIFY]})
        wait_until(lambda: healthy.messages(), timeout=5, what="the healthy notification")
        delay = time.monotonic() - began
        print(f"\nanother stream's notification arrived {delay:.2f} s after its PutMedia "
              f"began, while 12 waited for a tarpit")
        assert [m["FragmentNumber"] for m in healthy.messages().values()] == [fine[2]]
        # the stuck stream held one worker, and let go before its claim could lapse
        wait_until(lambda: tarpit.held_s, timeout=CLAIM_MS / 1000, what="a sender giving up")
        log = wait_until(lambda: re.search(
            rf"notification for stream stuck, fragment {stuck[0]} failed \(attempt 1 of 10\), "
            r"retrying in 1 s: \S.*", server.output()), timeout=5, what="the failure logged")
        print(f"held {tarpit.held_s[0]:.2f} s; logged: {log[0]}")
        assert tarpit.most_at_once == 1
        assert max(tarpit.held_s) < CLAIM_MS / 1000
    finally:
        server.stop()


def test_a_delivery_that_keeps_failing_is_dropped_and_counted(tmp_path, hooks, h264):
    _, _, failing = hooks
    server = serve(tmp_path, "--delivery-max-attempts", "3")
    try:
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="flaky", DataRetentionInHours=1)
        notify_to(kvs, "flaky", failing)
        numbers = put_tagged(server, h264, "flaky", 4, {1: [NOTIFY]})
        failed = deliveries("notification", "failed")
        text = wait_until(lambda: failed in (got := metrics_text(server)) and got,
                          timeout=15, what="the delivery given up")
        assert f"{failed} 1.0" in text
        assert f"{deliveries('notification', 'retried')} 2.0" in text
        assert len(failing.received) == 3 and len(failing.messages()) == 1  # one event
        assert re.search(rf"notification for stream flaky, fragment {numbers[1]} failed 3 "
                         r"times; dropped: .*500", server.output())
    finally:
        server.stop()


def test_failing_streams_cannot_fill_the_outbox_for_others(tmp_path, hooks, h264):
    tarpit, healthy, _ = hooks
    server = serve(tmp_path, "--delivery-queue-limit", "4", "--delivery-stream-limit", "3")
    try:
        kvs = server.client("kinesisvideo")
        for name, hook in (("hog1", tarpit), ("hog2", tarpit), ("fine", healthy)):
            kvs.create_stream(StreamName=name, DataRetentionInHours=1)
            notify_to(kvs, name, hook)
        put_tagged(server, h264, "hog1", 4)  # 3 kept (its own limit), 1 dropped
        put_tagged(server, h264, "hog2", 4)  # 1 kept, then 1 as its fair share (4 / 2)
        fine = put_tagged(server, h264, "fine", 4, {0: [NOTIFY]})  # full, but within its share
        wait_until(lambda: healthy.messages(), timeout=10, what="the healthy notification")
        assert [m["FragmentNumber"] for m in healthy.messages().values()] == [fine[0]]
        assert f'{deliveries("any", "dropped")} 3.0' in metrics_text(server)
        output = server.output()
        assert "hog1 has 3 deliveries waiting, its limit" in output
        assert "the delivery outbox holds 5 items, hog2's share of its limit (4)" in output
    finally:
        server.stop()


def test_an_image_delivery_s3_refuses_for_good_ends(tmp_path, seaweed, h264):
    # SeaweedFS makes a missing bucket on first write, so the refusal here is AWS's other
    # common one: credentials S3 does not know (403 InvalidAccessKeyId)
    env = {"AWS_ACCESS_KEY_ID": "AKIDUNKNOWN", "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_DEFAULT_REGION": REGION}
    server = serve(tmp_path, "--s3-endpoint-url", seaweed.endpoint_url,
                   "--min-sampling-interval-ms", "100", env=env)
    try:
        kvs = server.client("kinesisvideo")
        kvs.create_stream(StreamName="denied", DataRetentionInHours=1)
        kvs.update_image_generation_configuration(
            StreamName="denied", ImageGenerationConfiguration=image_config("kvs-denied", "x/"))
        numbers = put_tagged(server, h264, "denied", 4, {0: [IMAGE]})
        failed = deliveries("image-generation", "failed")
        text = wait_until(lambda: failed in (got := metrics_text(server)) and got,
                          timeout=15, what="the image delivery ended")
        assert f"{failed} 1.0" in text
        assert deliveries("image-generation", "retried") not in text
        assert re.search(rf"image-generation for stream denied, fragment {numbers[0]} failed "
                         r"permanently; dropped: S3 refused s3://kvs-denied/x/door_\S+: "
                         r"InvalidAccessKeyId", server.output())
    finally:
        server.stop()
