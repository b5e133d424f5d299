"""The web viewer signed in as someone other than the administrator, in real headless
Chromium: an IAM user whose policy allows a few actions on one stream, and temporary
credentials from the IoT credential provider (with their session token). What the policy
allows is shown; what it does not is said where the data would be, as "Not allowed: <action>
on <resource>", while the rest of the page keeps working. A wrong secret is a credentials
error, asked again in the dialog."""

from __future__ import annotations

import json
import time

import pytest
from conftest import ServerProcess, free_port
from kvs_media import producer_sdk_put_media
from test_iot_credentials import POLICY as DEVICE_POLICY
from test_iot_credentials import get_credentials, kvslite, wait_for_port
from test_web import new_page, settle, stream_details, tiles

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # a browser and a server with an IoT listener

ADMIN = {"key": "AKIDEXAMPLE", "secret": "secret"}
START_MS = (int(time.time()) - 7200) * 1000
STREAM_ONLY = "arn:aws:kinesisvideo:*:*:stream/{}/*"
USER_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kinesisvideo:ListStreams", "Resource": "*"},
    {"Effect": "Allow", "Action": [
        "kinesisvideo:DescribeStream", "kinesisvideo:ListFragments", "kinesisvideo:GetImages",
        "kinesisvideo:GetHLSStreamingSessionURL",
        "kinesisvideo:DescribeImageGenerationConfiguration"],
     "Resource": STREAM_ONLY.format("front-door")},
    # side-gate: its timeline, but no images
    {"Effect": "Allow", "Action": ["kinesisvideo:DescribeStream", "kinesisvideo:ListFragments"],
     "Resource": STREAM_ONLY.format("side-gate")},
]}


@pytest.fixture(scope="module")
def server(tmp_path_factory, h264):
    """The administrator's server with an IoT listener (role alias `camera`): front-door
    recorded, back-yard and side-gate empty, one signaling channel."""
    tmp = tmp_path_factory.mktemp("web-iam")
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(DEVICE_POLICY))
    iot_port = free_port()
    server = ServerProcess(tmp / "data", "--access-key-id", ADMIN["key"],
                           "--secret-access-key", ADMIN["secret"], "--iot-port", str(iot_port),
                           "--iot-role-alias", f"camera={policy}").start()
    server.iot_port = iot_port
    kvs = server.client("kinesisvideo")
    server.arns = {name: kvs.create_stream(StreamName=name, DataRetentionInHours=24)["StreamARN"]
                   for name in ("front-door", "back-yard", "side-gate")}
    server.channel_arn = kvs.create_signaling_channel(ChannelName="porch")["ChannelARN"]
    status, error, _, _ = producer_sdk_put_media(
        server.port, "front-door", synthetic.to_mkv(h264, START_MS), **ADMIN,
        signed={"x-amzn-producer-start-timestamp": f"{START_MS / 1000:.3f}"})
    assert (status, error) == (200, None)
    wait_for_port(iot_port)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def user_keys(server):
    iam = server.client("iam")
    iam.create_user(UserName="viewer")
    iam.put_user_policy(UserName="viewer", PolicyName="front-door-only",
                        PolicyDocument=json.dumps(USER_POLICY))
    key = iam.create_access_key(UserName="viewer")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def sign_in(page, key: str, secret: str, token: str = "") -> None:
    form = page.page.locator("#credentials-form")
    form.locator("[name=accessKeyId]").fill(key)
    form.locator("[name=secretAccessKey]").fill(secret)
    if token:
        form.locator("[name=sessionToken]").fill(token)
    form.locator("button[type=submit]").click()


def visible_text(page, selector: str) -> str | None:
    """The element's text, or None while it is hidden."""
    return page.page.eval_on_selector(selector, "e => e.hidden ? null : e.textContent")


def test_a_user_sees_what_the_policy_allows_and_not_allowed_for_the_rest(
        browser, server, user_keys):
    key, secret = user_keys
    arns = server.arns
    context, page = new_page(browser)
    try:
        page.page.goto(server.endpoint + "/")
        page.page.wait_for_selector("#credentials-dialog[open]")
        sign_in(page, key, "not-the-secret")  # a credentials error, asked again
        page.page.wait_for_selector("#credentials-dialog[open]")
        assert "refused these keys (InvalidSignatureException" in \
            page.page.text_content("#credentials-reason")
        sign_in(page, key, secret)

        # the list: both streams; back-yard's summary (ListFragments) is not allowed
        page.page.wait_for_selector("#list-view[data-ready]")
        assert page.page.eval_on_selector_all(
            "#streams tbody tr", "rows => rows.map(r => r.dataset.stream)") == \
            ["back-yard", "front-door", "side-gate"]
        page.page.wait_for_function("() => !document.querySelector('#streams .pending')")
        back_yard = "#streams tr[data-stream=back-yard]"
        assert page.page.text_content(f"{back_yard} .last") == "not allowed"
        assert page.page.get_attribute(f"{back_yard} .size", "title") == \
            f"Not allowed: kinesisvideo:ListFragments on {arns['back-yard']}"
        assert page.page.text_content("#streams tr[data-stream=front-door] .size") != "—"
        # the channel list: not allowed, in its place
        page.page.wait_for_selector("#channels[data-ready]", state="attached")
        assert visible_text(page, "#channels-denied") == \
            "Not allowed: kinesisvideo:ListSignalingChannels on *"
        assert page.page.is_hidden("#channels")
        assert visible_text(page, "#error") is None  # nothing failed generically
        page.shot("20-iam-list")

        # front-door: timeline, thumbnails, playback; its notifications are not allowed
        page.page.click("#streams tbody tr[data-stream=front-door] a")
        settle(page)
        images = [t["ts"] for t in tiles(page) if t["state"] == "image"]
        assert images and all(START_MS <= ts < START_MS + 4000 for ts in images)
        details = stream_details(page)
        assert details["images"][1] == "not configured"
        assert details["notifications"][1:] == ("not allowed",
            f"Not allowed: kinesisvideo:DescribeNotificationConfiguration on "
            f"{arns['front-door']}")
        page.shot("21-iam-allowed-stream")
        page.page.click("#thumbs .tile[data-state=image]")
        page.page.wait_for_function("() => document.querySelector('video').currentTime > 0.5")

        # side-gate: its timeline, but GetImages is not allowed: the thumbnails say so
        page.page.goto(f"{server.endpoint}/#/stream/side-gate")
        page.page.wait_for_selector("#thumbs[data-state=denied]")
        assert page.page.text_content("#thumbs") == \
            f"Not allowed: kinesisvideo:GetImages on {arns['side-gate']}"

        # back-yard: nothing allowed but the list; the stream's page says what was refused
        page.page.goto(f"{server.endpoint}/#/stream/back-yard")
        page.page.wait_for_selector("#stream-status[data-state=denied]")
        assert page.page.text_content("#stream-status") == \
            f"Not allowed: kinesisvideo:DescribeStream on {arns['back-yard']}"
        assert visible_text(page, "#error") is None
        assert page.page.is_hidden("#credentials-dialog")  # good keys: not asked again
        page.shot("22-iam-denied-stream")

        # the live page of a channel the user may not describe
        page.page.goto(f"{server.endpoint}/#/channel/porch")
        page.page.wait_for_selector("#live-state[data-state=failed]")
        assert page.page.text_content("#live-state") == "Not allowed"
        assert visible_text(page, "#error") == \
            f"Not allowed: kinesisvideo:DescribeSignalingChannel on {server.channel_arn}"
        assert not page.errors
    finally:
        context.close()


def test_temporary_credentials_from_the_iot_credential_provider(browser, server, tmp_path):
    """A device's credentials (policy: its own stream) with their session token: the stream
    shows, listing streams or channels is not allowed."""
    cert, cert_key = kvslite("iot", "issue-cert", "front-door", "--out", str(tmp_path),
                             data_dir=server.data_dir)
    (ca,) = kvslite("iot", "ca", data_dir=server.data_dir)
    status, _, body = get_credentials(server.iot_port, ca, cert, cert_key, "front-door")
    assert status == 200
    credentials = body["credentials"]
    context, page = new_page(browser)
    try:
        page.page.goto(server.endpoint + "/")
        page.page.wait_for_selector("#credentials-dialog[open]")
        sign_in(page, credentials["accessKeyId"], credentials["secretAccessKey"],
                credentials["sessionToken"])
        page.page.wait_for_selector("#list-view[data-ready]")
        assert visible_text(page, "#streams-denied") == \
            "Not allowed: kinesisvideo:ListStreams on *"
        page.page.wait_for_selector("#channels[data-ready]", state="attached")
        assert visible_text(page, "#channels-denied") == \
            "Not allowed: kinesisvideo:ListSignalingChannels on *"
        assert page.page.evaluate(
            "JSON.parse(sessionStorage['kvslite.credentials']).sessionToken") == \
            credentials["sessionToken"]

        page.page.goto(f"{server.endpoint}/#/stream/front-door")
        settle(page)
        images = [t["ts"] for t in tiles(page) if t["state"] == "image"]
        assert images and all(START_MS <= ts < START_MS + 4000 for ts in images)
        assert page.page.is_hidden("#credentials-dialog")
        page.shot("23-iot-credentials")
        assert not page.errors
    finally:
        context.close()
