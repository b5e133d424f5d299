"""AWS's WebRTC JS SDK in headless Chromium: the pages the WebRTC browser tests open.

tests/webrtc_js/page.js follows the SDK's example flow (DescribeSignalingChannel,
GetSignalingChannelEndpoint, GetIceServerConfig, then the SDK's SignalingClient over
wss://); it is bundled with esbuild from the pinned npm packages and served from an origin
of its own (a small HTTP server here), so every call to kvslite is a CORS call. Each page
is one `Peer`: MASTER sends Chromium's fake camera, VIEWER decodes it.

Fixtures `bundle`, `page_origin` and `browser`: a test module imports their functions
(`browser_fixture`, ...), which pytest then finds by the fixtures' names.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REGION

JS_PROJECT = Path(__file__).parent / "webrtc_js"
ESBUILD = JS_PROJECT / "node_modules/.bin/esbuild"
NPM_PACKAGES = "the WebRTC JS SDK's npm packages (npm ci --prefix tests/webrtc_js)"

KEY, SECRET = "AKIAKVSLITEWEBRTC", "kvslite-webrtc-secret"
CHANNEL = "front-door"
PAGE = b"<!doctype html><html><body><script src='/peer.js'></script></body></html>"
# the fake camera and microphone, granted without a prompt; kvslite's test certificate
BROWSER_ARGS = CHROMIUM_ARGS + ["--use-fake-device-for-media-stream",
                                "--use-fake-ui-for-media-stream", "--ignore-certificate-errors"]


@pytest.fixture(scope="module", name="bundle")
def bundle_fixture(tmp_path_factory) -> bytes:
    """page.js with the SDK and the AWS SDK clients, built for the browser now."""
    out = tmp_path_factory.mktemp("webrtc_js") / "peer.js"
    sdk_version = json.loads((JS_PROJECT / "package.json").read_text())["dependencies"][
        "amazon-kinesis-video-streams-webrtc"]
    # `ws` is the SDK's fallback outside browsers, which have WebSocket; the SDK's own build
    # defines its VERSION from process.env, which browsers lack
    subprocess.run([str(ESBUILD), "page.js", "--bundle", "--format=iife", "--platform=browser",
                    "--external:ws", f'--define:process.env.PACKAGE_VERSION="{sdk_version}"',
                    "--log-level=warning", f"--outfile={out}"],
                   cwd=JS_PROJECT, check=True, capture_output=True, timeout=60)
    return out.read_bytes()


@pytest.fixture(scope="module", name="page_origin")
def page_origin_fixture(bundle):
    """The pages' origin: an HTTP server on a port of its own, so not kvslite's origin."""
    files = {"/peer.html": (PAGE, "text/html"), "/peer.js": (bundle, "text/javascript")}

    class PageHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body, content_type = files.get(urlsplit(self.path).path, (b"not found", "text/plain"))
            self.send_response(200 if body != b"not found" else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    import playwright.sync_api as playwright_api

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        yield browser
        browser.close()


class Peer:
    """One page: its window.peer state, its WebSocket URLs and its console errors.

    `endpoint` is kvslite's HTTPS URL (a node's or a balancer's); `extra` goes into the
    page's query as page.js reads it (clientId, signalingSecretAccessKey, wssEndpoint)."""

    def __init__(self, browser, page_origin: str, endpoint: str, role: str, secret=SECRET,
                 **extra):
        self.context = browser.new_context()
        self.context.set_default_timeout(20_000)
        self.page = self.context.new_page()
        self.websockets: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("websocket", lambda ws: self.websockets.append(ws.url))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        query = {"endpoint": endpoint, "region": REGION, "accessKeyId": KEY,
                 "secretAccessKey": secret, "channel": CHANNEL, "role": role, **extra}
        self.page.goto(f"{page_origin}/peer.html?{urlencode(query)}")

    def wait_for(self, condition: str):
        """Waits until `condition` (JS on `peer`) holds or the page reports an error."""
        self.page.wait_for_function(f"() => peer.errors.length > 0 || ({condition})")
        return self.state()

    def state(self) -> dict:
        return self.page.evaluate("() => peer")

    def close(self):
        self.context.close()


@contextlib.contextmanager
def peers_on(browser, page_origin: str, endpoint: str) -> Iterator[Callable[..., "Peer"]]:
    """open_peer(role, **options) -> a new Peer of the endpoint; all closed on the way out."""
    opened: list[Peer] = []

    def open_peer(role: str, **options) -> Peer:
        opened.append(Peer(browser, page_origin, endpoint, role, **options))
        return opened[-1]

    try:
        yield open_peer
    finally:
        for peer in opened:
            peer.close()
