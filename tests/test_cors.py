"""CORS: hls.js and dash.js play kvslite's sessions from a page on another origin, and the
APIs answer other origins' pages only as --cors-allow-origins says.

The pages come from a small HTTP server of the test's own, on other ports than kvslite's
(so other origins): one whose origin kvslite allows, one it does not. The players run in
Debian's headless Chromium: hls.js as the web viewer vendors it, dash.js as tests/players/
vendors it (VERSIONS.txt there).
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from pathlib import Path

import pytest

from kvs_media import PutMediaConnection, put_mkv
from kvslite.media import mkv, synthetic

pytestmark = pytest.mark.slow  # a browser and a server

PLAYERS = Path(__file__).parent / "players"
HLS_JS = (Path(__file__).parents[1] / "src/kvslite/server/web/static/vendor/hls-1.7.4.min.js")
DASH_JS = PLAYERS / "dash-5.2.1.all.min.js"
START_MS = (int(time.time()) - 3600) * 1000

# The page: window.play(kind, url) starts hls.js or dash.js on the <video>; fatal player
# errors land in window.playerErrors; window.listStreams(endpoint) calls the API by fetch.
PLAYER_PAGE = b"""<!doctype html>
<html><body>
<video muted autoplay playsinline width="320" height="240"></video>
<script src="/hls.js"></script>
<script src="/dash.js"></script>
<script>
window.playerErrors = [];
const video = document.querySelector('video');
window.play = (kind, url) => {
  if (kind === 'hls') {
    const hls = new Hls();
    hls.on(Hls.Events.ERROR, (e, data) => {
      if (data.fatal) playerErrors.push(data.type + ': ' + data.details);
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  } else {
    const player = dashjs.MediaPlayer().create();
    player.on(dashjs.MediaPlayer.events.ERROR,
              e => playerErrors.push(JSON.stringify(e.error)));
    player.initialize(video, url, true);
  }
  video.play().catch(() => {});
};
window.listStreams = async endpoint => {
  try {
    const r = await fetch(endpoint + '/listStreams', {method: 'POST', body: '{}',
      headers: {'Content-Type': 'application/json'}});
    return {status: r.status, requestId: r.headers.get('x-amzn-RequestId'),
            names: (await r.json()).StreamInfoList.map(s => s.StreamName)};
  } catch (e) {
    return {error: String(e)};
  }
};
</script>
</body></html>
"""
FILES = {"/player.html": (PLAYER_PAGE, "text/html"),
         "/hls.js": (HLS_JS.read_bytes(), "text/javascript"),
         "/dash.js": (DASH_JS.read_bytes(), "text/javascript")}


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body, content_type = FILES.get(self.path, (b"not found", "text/plain"))
        self.send_response(200 if self.path in FILES else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origins():
    """Two page servers: (allowed origin, other origin)."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
               for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tuple(f"http://127.0.0.1:{server.server_address[1]}" for server in servers)
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(module_servers, origins, h264):
    server = module_servers("--cors-allow-origins", origins[0])
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="recorded", DataRetentionInHours=24)
    kvs.create_stream(StreamName="camera", DataRetentionInHours=1)
    put_mkv(server.port, "recorded", synthetic.to_mkv(h264, START_MS))
    return server


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def camera(server):
    """A producer sending in real time to `camera`: three seconds at once, then one
    fragment a second, for the LIVE tests."""
    video = synthetic.encode_video("h264", seconds=30, gop=25, bframes=0)
    now_ms = int(time.time() * 1000)
    conn = PutMediaConnection(server.port, "camera")
    stop = threading.Event()

    def produce():
        conn.send(mkv.write_header(synthetic.stream_header(video)))
        for i, cluster in enumerate(synthetic.clusters(video, now_ms - 3000)):
            conn.send(mkv.write_cluster(cluster)[0])
            if i >= 3 and stop.wait(max(0.0, (now_ms + (i - 3) * 1000) / 1000 - time.time())):
                break
        conn.finish()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    conn.wait_for("PERSISTED", 3)
    yield
    stop.set()
    producer.join(timeout=15)
    conn.close()


def session_url(archived, kind: str, mode: str) -> str:
    selector = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
        "StartTimestamp": START_MS / 1000, "EndTimestamp": (START_MS + 3999) / 1000}}
    stream = "camera" if mode == "LIVE" else "recorded"
    if kind == "hls":
        extra = {"HLSFragmentSelector": selector} if mode == "ON_DEMAND" else {}
        return archived.get_hls_streaming_session_url(
            StreamName=stream, PlaybackMode=mode, **extra)["HLSStreamingSessionURL"]
    extra = {"DASHFragmentSelector": selector} if mode == "ON_DEMAND" else {}
    return archived.get_dash_streaming_session_url(
        StreamName=stream, PlaybackMode=mode, **extra)["DASHStreamingSessionURL"]


# -- players on a page of another origin ----------------------------------------------------

@pytest.mark.parametrize("mode", ["ON_DEMAND", "LIVE"])
@pytest.mark.parametrize("kind", ["hls", "dash"])
def test_players_on_another_origin_play(page, server, archived, origins, request, kind, mode):
    if mode == "LIVE":
        request.getfixturevalue("camera")
    media = []  # every answer kvslite gave the player
    page.on("response", lambda r: media.append(r) if r.url.startswith(server.endpoint)
            else None)
    # the origin kvslite's setting does not list: media is open to any origin
    page.goto(f"{origins[1]}/player.html")
    started = time.monotonic()
    page.evaluate("([kind, url]) => play(kind, url)", [kind, session_url(archived, kind, mode)])
    page.wait_for_function("() => playerErrors.length > 0 || "
                           "(document.querySelector('video').readyState === 4 && "
                           "document.querySelector('video').currentTime > 0.3)")
    first = page.evaluate("document.querySelector('video').currentTime")
    page.wait_for_function("t => playerErrors.length > 0 || "
                           "document.querySelector('video').currentTime > t", arg=first + 0.5)
    state = page.evaluate("""() => {const v = document.querySelector('video');
        return {errors: playerErrors, readyState: v.readyState, t: v.currentTime,
                paused: v.paused, width: v.videoWidth}}""")
    assert state["errors"] == []
    assert (state["readyState"], state["paused"], state["width"]) == (4, False, 320)
    assert state["t"] > first + 0.5
    kinds = {r.url.split("?")[0].rsplit("/", 1)[1] for r in media}
    expected = ({"getHLSMasterPlaylist.m3u8", "getHLSMediaPlaylist.m3u8"} if kind == "hls"
                else {"getDASHManifest.mpd"}) | {"getMP4InitFragment.mp4",
                                                 "getMP4MediaFragment.mp4"}
    assert kinds == expected
    # no refetch storm: the players refresh a LIVE playlist/manifest about once a fragment (1 s)
    refreshes = sum(".m3u8" in r.url or ".mpd" in r.url for r in media)
    assert refreshes <= 2 + 2 * (time.monotonic() - started)
    assert {(r.status, r.headers.get("access-control-allow-origin")) for r in media} == \
        {(200, "*")}


# -- the APIs from a browser -------------------------------------------------------------------

def test_an_allowed_origin_calls_the_api_and_another_is_blocked(page, server, origins):
    page.goto(f"{origins[0]}/player.html")
    answer = page.evaluate("endpoint => listStreams(endpoint)", server.endpoint)
    assert answer["status"] == 200 and answer["requestId"]  # an exposed header
    assert answer["names"] == ["camera", "recorded"]

    page.goto(f"{origins[1]}/player.html")
    answer = page.evaluate("endpoint => listStreams(endpoint)", server.endpoint)
    assert answer == {"error": "TypeError: Failed to fetch"}


# -- the headers, over plain HTTP --------------------------------------------------------------

def raw(server, method: str, path: str, headers: dict, body: bytes = b""):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            response.read()
    finally:
        conn.close()


SIGV4_HEADERS = "authorization,content-type,x-amz-date,x-amz-content-sha256,x-amz-user-agent"


def preflight(server, origin: str, path="/listStreams", method="POST"):
    return raw(server, "OPTIONS", path, {"Origin": origin,
                                         "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": SIGV4_HEADERS})


def test_api_preflight_from_an_allowed_origin(server, origins):
    status, headers, body = preflight(server, origins[0])
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == origins[0]
    assert headers["access-control-allow-headers"] == SIGV4_HEADERS
    assert headers["access-control-allow-methods"] == "POST, GET, HEAD"
    assert headers["vary"] == "Origin"
    assert headers["x-amzn-requestid"]


def test_api_preflight_from_another_origin_is_refused(server, origins):
    for origin in (origins[1], "https://evil.example", "null"):
        status, headers, _ = preflight(server, origin)
        assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException")
        assert not [name for name in headers if name.startswith("access-control-")]


def test_api_answers_and_errors_carry_cors_for_an_allowed_origin(server, origins):
    status, headers, _ = raw(server, "POST", "/describeStream",
                             {"Origin": origins[0], "Content-Type": "application/json"},
                             b'{"StreamName": "no-such-stream"}')
    assert (status, headers["x-amzn-errortype"]) == (404, "ResourceNotFoundException")
    assert headers["access-control-allow-origin"] == origins[0]
    assert headers["access-control-expose-headers"] == "x-amzn-RequestId, x-amzn-ErrorType"
    status, headers, _ = raw(server, "POST", "/listStreams", {"Origin": origins[1]}, b"{}")
    assert status == 200 and "access-control-allow-origin" not in headers


def test_media_is_open_to_any_origin(server, archived):
    url = session_url(archived, "hls", "ON_DEMAND")
    path = url.split(server.endpoint, 1)[1]
    status, headers, _ = raw(server, "GET", path, {"Origin": "https://any.example"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-expose-headers"] == \
        "Content-Length, Content-Range, Date, x-amzn-RequestId, x-amzn-ErrorType"
    # an error too, so a player can read why
    status, headers, _ = raw(server, "GET", "/dash/v1/getDASHManifest.mpd?SessionToken=bad",
                             {"Origin": "https://any.example"})
    assert (status, headers["x-amzn-errortype"]) == (403, "NotAuthorizedException")
    assert headers["access-control-allow-origin"] == "*"
    status, headers, _ = preflight(server, "https://any.example",
                                   path="/hls/v1/getHLSMediaPlaylist.m3u8", method="GET")
    assert (status, headers["access-control-allow-origin"]) == (204, "*")
    assert headers["access-control-allow-methods"] == "GET, HEAD"


def test_by_default_no_origin_may_call_the_apis(in_process):
    status, headers, _ = in_process.raw("OPTIONS", "/listStreams", headers={
        "Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST"})
    assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException")
    assert "access-control-allow-origin" not in headers
    status, headers, _ = in_process.raw("GET", "/hls/v1/getHLSMasterPlaylist.m3u8",
                                        headers={"Origin": "http://127.0.0.1:8080"})
    assert (status, headers["x-amzn-errortype"]) == (400, "MissingParameter")
    assert headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("value", ["ftp://files.example", "https://app.example/path",
                                   "app.example", "https://"])
def test_bad_origins_are_refused_at_start(value):
    from kvslite.server.config import Settings

    with pytest.raises(ValueError, match="--cors-allow-origins"):
        Settings(cors_allow_origins=value).check()


def test_origins_parse():
    from kvslite.server.edge.cors import parse_origins

    assert parse_origins(None) == frozenset()
    assert parse_origins(" https://a.example:8443/ , http://localhost:3000") == \
        {"https://a.example:8443", "http://localhost:3000"}
    assert parse_origins("*") == {"*"}

