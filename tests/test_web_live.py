"""Live view in the web viewer: a signaling channel watched over WebRTC, in real Chromium.

A real `kvslite serve` with SigV4 on. The MASTER is a second Chromium page with the fake
camera, running a tiny master of its own (below) that speaks the raw signaling protocol:
on SDP_OFFER it answers with its camera's tracks, sends SDP_ANSWER to the viewer's
ClientId and trickles ICE. The VIEWER is kvslite's own page at `/#/channel/<name>`. ICE
runs on loopback host candidates (`--allow-loopback-in-peer-connection`), so no TURN.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REGION
from test_signaling_ws import KEY, SECRET, SIGNED, create_channel, master_url
from test_web import ARTIFACTS

pytestmark = pytest.mark.slow  # a browser with a fake camera, and a WebRTC call

WEBRTC_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
               "--allow-loopback-in-peer-connection"]

MASTER_JS = """async (url) => {
  const camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const viewers = new Map();  // ClientId -> {pc, ready}: ICE waits for the offer to apply
  window.answers = 0;
  const ws = new WebSocket(url);
  const send = (action, recipientClientId, payload) => ws.send(JSON.stringify({
    action, recipientClientId, messagePayload: btoa(JSON.stringify(payload)) }));
  ws.onmessage = async (event) => {
    const message = JSON.parse(event.data);
    const viewer = message.senderClientId;
    const payload = message.messagePayload ? JSON.parse(atob(message.messagePayload)) : null;
    if (message.messageType === 'SDP_OFFER') {
      const pc = new RTCPeerConnection();
      pc.onicecandidate = ({ candidate }) => {
        if (candidate) send('ICE_CANDIDATE', viewer, candidate.toJSON());
      };
      const ready = pc.setRemoteDescription(payload);
      viewers.set(viewer, { pc, ready });
      await ready;
      for (const track of camera.getTracks()) pc.addTrack(track, camera);
      await pc.setLocalDescription(await pc.createAnswer());
      send('SDP_ANSWER', viewer, pc.localDescription.toJSON());
      window.answers++;
    } else if (message.messageType === 'ICE_CANDIDATE') {
      const { pc, ready } = viewers.get(viewer);
      await ready;
      await pc.addIceCandidate(payload);
    }
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
}"""


@pytest.fixture(scope="module")
def webrtc_browser():
    """Headless Chromium with a fake camera that may connect peers over loopback."""
    import playwright.sync_api as playwright_api

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS + WEBRTC_ARGS)
        yield browser
        browser.close()


class MasterPage(BaseHTTPRequestHandler):
    """An empty page on loopback for the master: a secure context (getUserMedia works)
    in the same address space as kvslite, which Chromium lets it reach."""

    def do_GET(self):
        body = b"<!doctype html><title>master</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def master_page_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), MasterPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/master.html"
    server.shutdown()
    server.server_close()


@pytest.fixture
def contexts(webrtc_browser):
    """new() -> (context, page, script errors); all closed at teardown."""
    opened = []

    def new(**context_args):
        context = webrtc_browser.new_context(viewport={"width": 1280, "height": 800},
                                             **context_args)
        context.set_default_timeout(15_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        opened.append(context)
        return context, page, errors

    yield new
    for context in opened:
        context.close()


def signed_in(context) -> None:
    """The keys the credentials dialog would store for this tab."""
    keys = {"accessKeyId": KEY, "secretAccessKey": SECRET, "region": REGION}
    context.add_init_script(
        f"sessionStorage.setItem('kvslite.credentials', {json.dumps(json.dumps(keys))});")


def start_master(contexts, page_url: str, server, arn: str):
    _, page, errors = contexts()
    page.goto(page_url)
    page.evaluate(MASTER_JS, master_url(server, arn))
    return page, errors


def test_a_channel_plays_live_from_its_master(contexts, master_page_url, start_server):
    server = start_server(*SIGNED)
    arn = create_channel(server, "porch")
    create_channel(server, "garage")
    master, master_errors = start_master(contexts, master_page_url, server, arn)

    context, page, errors = contexts()
    signed_in(context)
    page.goto(server.endpoint + "/")
    page.wait_for_selector("#channels[data-ready]")
    assert page.eval_on_selector_all(
        "#channels tbody tr", "rows => rows.map(r => r.dataset.channel)") == ["garage", "porch"]
    assert page.eval_on_selector_all(
        "#channels tbody tr[data-channel=porch] td",
        "cells => cells.slice(1, 3).map(c => c.textContent)") == ["SINGLE_MASTER", "ACTIVE"]

    page.click("#channels tbody tr[data-channel=porch] a")
    page.wait_for_selector("#channel-view[data-ready]")
    page.wait_for_selector("#live-state[data-state=connected]")
    page.wait_for_function("() => document.querySelector('#live-video').readyState === 4")
    start = page.evaluate("document.querySelector('#live-video').currentTime")
    page.wait_for_function(
        "start => document.querySelector('#live-video').currentTime > start + 0.5", arg=start)
    video = page.evaluate("""(() => { const v = document.querySelector('#live-video');
        return [v.videoWidth > 0, v.srcObject.getVideoTracks().length,
                v.srcObject.getAudioTracks().length]; })()""")
    assert video == [True, 1, 1]
    assert master.evaluate("window.answers") == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "20-live-channel.png"))

    # Deleting the channel ends its connections with GO_AWAY: the page joins again, and
    # says plainly that the channel is gone.
    kvs = server.client("kinesisvideo", key=KEY, secret=SECRET)
    kvs.delete_signaling_channel(ChannelARN=arn)
    page.wait_for_selector("#live-state[data-state=failed]")
    assert page.text_content("#error").startswith("ResourceNotFoundException: ")
    assert errors == [] and master_errors == []


def test_anonymous_mode_joins_unsigned(contexts, master_page_url, start_server):
    """No keys on the server: the page opens the WebSocket without a signature."""
    server = start_server()
    arn = create_channel(server, "yard")
    start_master(contexts, master_page_url, server, arn)
    _, page, errors = contexts()
    page.goto(server.endpoint + "/#/channel/yard")
    page.wait_for_selector("#live-state[data-state=connected]")
    page.wait_for_function("() => document.querySelector('#live-video').readyState === 4")
    assert errors == []


def test_the_presigned_url_matches_the_js_sdk_signing_vector(contexts, start_server):
    """The page's presigned WebSocket URL is the one AWS's JS SDK signs (its unit test's
    vector, WEBRTC-NOTES §4.1)."""
    server = start_server()
    _, page, _ = contexts()
    page.goto(server.endpoint + "/")
    when = dt.datetime(2019, 12, 1, tzinfo=dt.timezone.utc).isoformat()
    url = page.evaluate("""async (when) => {
        const { presignUrl } = await import('/web/sigv4.js');
        return presignUrl('wss://kvs.awsamazon.com', { 'X-Amz-TestParam': 'test-param-value' },
          { accessKeyId: 'AKIA4F7WJQR7FMMWMNXI', secretAccessKey: 'FakeSecretKey',
            sessionToken: 'FakeSessionToken', region: 'us-west-2' }, new Date(when));
    }""", when)
    assert url.endswith("&X-Amz-Signature="
                        "fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92")
    assert url.startswith("wss://kvs.awsamazon.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256&")
