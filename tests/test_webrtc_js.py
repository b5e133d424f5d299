"""AWS's WebRTC JS SDK against kvslite: a MASTER page and a VIEWER page in headless Chromium.

Both pages run tests/webrtc_js/page.js, which follows the SDK's example flow
(DescribeSignalingChannel, GetSignalingChannelEndpoint, GetIceServerConfig, then the
SDK's SignalingClient over wss://), bundled with esbuild from the pinned npm packages.
kvslite serves HTTPS with SigV4 on; the pages come from another origin (a small HTTP
server of the test's own), so every API call is a CORS call; ICE is relayed only, through
coturn on loopback (Chromium gathers no loopback host candidates). The master sends
Chromium's fake camera; the viewer must decode it.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from conftest import REGION
from engines import need
from webrtc_pages import (  # noqa: F401 - the *_fixture functions: fixtures used here
    CHANNEL,
    ESBUILD,
    KEY,
    NPM_PACKAGES,
    SECRET,
    browser_fixture,
    bundle_fixture,
    page_origin_fixture,
    peers_on,
)

pytestmark = pytest.mark.slow  # a browser, coturn and a TLS server

need(ESBUILD.exists(), NPM_PACKAGES)


@pytest.fixture
def kvs_webrtc(start_server, certificate, coturn, page_origin):
    """kvslite over TLS with SigV4, the pages' origin allowed, coturn handed out for ICE."""
    cert, key = certificate
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key),
                          "--access-key-id", KEY, "--secret-access-key", SECRET,
                          "--cors-allow-origins", page_origin, "--access-log",
                          *coturn.kvslite_args())
    server.https = f"https://127.0.0.1:{server.port}"
    kvs = boto3.client("kinesisvideo", endpoint_url=server.https, region_name=REGION,
                       aws_access_key_id=KEY, aws_secret_access_key=SECRET, verify=str(cert),
                       config=Config(retries={"max_attempts": 1}))
    server.channel_arn = kvs.create_signaling_channel(ChannelName=CHANNEL)["ChannelARN"]
    kvs.close()  # a kept-alive connection would hold up the server's shutdown
    return server


@pytest.fixture
def peers(browser, page_origin, kvs_webrtc):
    with peers_on(browser, page_origin, kvs_webrtc.https) as open_peer:
        yield open_peer


def wait_for_connect_lines(server, timeout_s: float = 5) -> list[tuple[str, str]]:
    """(operation, status) of the access log's WebSocket lines, once there is one."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = re.findall(r" op=(ConnectAs\w+) .* status=(\d+)", server.output())
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def signed_query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_viewer_decodes_the_masters_camera_through_kvslite_and_coturn(kvs_webrtc, peers,
                                                                      coturn):
    master = peers("MASTER")
    state = master.wait_for("peer.signaling === 'open'")
    assert (state["signaling"], state["errors"]) == ("open", [])
    viewer = peers("VIEWER", clientId="viewer-1")
    state = viewer.wait_for("peer.connectionState === 'connected' && peer.framesDecoded > 10")
    assert state["errors"] == []
    assert (state["signaling"], state["connectionState"]) == ("open", "connected")
    assert state["framesDecoded"] > 10
    state = master.wait_for("peer.connectionState === 'connected' && peer.framesEncoded > 10")
    assert (state["errors"], state["connectionState"]) == ([], "connected")
    assert state["framesEncoded"] > 10

    # the signaling WebSocket is kvslite's TLS port, as GetSignalingChannelEndpoint says
    assert state["wssEndpoint"] == f"wss://127.0.0.1:{kvs_webrtc.port}"
    # ICE servers: coturn, with credentials of coturn's TURN REST scheme
    [ice] = state["iceServers"]
    assert ice["Uris"] == coturn.uris()
    assert ice["Ttl"] > 30 and ice["Username"].split(":")[0].isdigit()
    # one presigned URL per page, SigV4 over the query as the SDK signs it
    [master_url], [viewer_url] = master.websockets, viewer.websockets
    for url, role in ((master_url, "MASTER"), (viewer_url, "VIEWER")):
        assert url.startswith(f"wss://127.0.0.1:{kvs_webrtc.port}/?")
        query = signed_query(url)
        assert query["X-Amz-ChannelARN"] == kvs_webrtc.channel_arn
        assert query["X-Amz-Credential"].startswith(f"{KEY}/")
        assert query["X-Amz-Credential"].endswith(f"/{REGION}/kinesisvideo/aws4_request")
        assert (query["X-Amz-Algorithm"], query["X-Amz-SignedHeaders"]) == \
            ("AWS4-HMAC-SHA256", "host")
        assert ("X-Amz-ClientId" in query) == (role == "VIEWER")
    assert signed_query(viewer_url)["X-Amz-ClientId"] == "viewer-1"
    assert "Traceback" not in kvs_webrtc.output()


def test_a_wrong_secret_is_refused_and_nothing_connects(kvs_webrtc, peers):
    master = peers("MASTER")
    assert master.wait_for("peer.signaling === 'open'")["errors"] == []

    # a page signed with a wrong secret: its first call, DescribeSignalingChannel, is refused
    stranger = peers("VIEWER", clientId="stranger", secret="not-the-secret")
    state = stranger.wait_for("false")
    assert state["errors"] == [(
        "setup: InvalidSignatureException: The request signature we calculated does not match "
        "the signature you provided. Check your AWS Secret Access Key and signing method.")]

    # a viewer whose WebSocket URL only is signed wrong: refused before the upgrade, 403
    viewer = peers("VIEWER", clientId="viewer-1", signalingSecretAccessKey="not-the-secret")
    state = viewer.wait_for("false")
    assert state["errors"] == ["signaling: error event"]
    viewer.page.wait_for_function("() => peer.signaling === 'closed'")
    [url] = viewer.websockets
    assert url.startswith(f"wss://127.0.0.1:{kvs_webrtc.port}/?")
    assert any("Unexpected response code: 403" in line for line in viewer.console_errors)
    # kvslite's access log has the refused upgrade (an accepted one is logged when it ends)
    assert wait_for_connect_lines(kvs_webrtc) == [("ConnectAsViewer", "403")]

    # nothing connected: the master got no offer
    state = master.state()
    assert (state["connectionState"], state["framesEncoded"], state["errors"]) == ("new", 0, [])
    assert viewer.state()["connectionState"] == "new"
    assert "Traceback" not in kvs_webrtc.output()
