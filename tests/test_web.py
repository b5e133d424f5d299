"""The web viewer at `/`, in real headless Chromium (Debian's, driven by Playwright).

One server with a stream recorded twice with a gap in between. The page must list the
streams, draw the gap on the timeline, show thumbnails that are the frames GetImages
returns, play HLS, and download zips and clips. Screenshots of every state are kept under
$KVSLITE_TEST_ARTIFACTS/web (default tests/artifacts/web).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import io
import os
import threading
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from PIL import Image

from kvs_media import PutMediaConnection, psnr, put_mkv
from kvslite.media import mkv, synthetic

pytestmark = pytest.mark.slow  # a browser (conftest's fixture: Debian's chromium)

ARTIFACTS = Path(os.environ.get("KVSLITE_TEST_ARTIFACTS",
                                Path(__file__).parent / "artifacts")) / "web"

START_MS = (int(time.time()) - 7200) * 1000
GAP_START_MS = START_MS + 100_000
SPANS = [(START_MS, START_MS + 4000), (GAP_START_MS, GAP_START_MS + 4000)]
STREAMS = ["back-yard", "front-door", "live-cam", "no-retention"]


def in_media(t_ms: int) -> bool:
    return any(start <= t_ms < end for start, end in SPANS)


def local_input(ms: int) -> str:
    """A datetime-local value; the browser context runs in UTC."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3]


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, h264):
    from conftest import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("web") / "data",
                           "--min-sampling-interval-ms", "1").start()
    kvs = server.client("kinesisvideo")
    kvs.create_stream(StreamName="front-door", DataRetentionInHours=24, MediaType="video/h264")
    kvs.create_stream(StreamName="back-yard", DataRetentionInHours=48)
    kvs.create_stream(StreamName="no-retention", DataRetentionInHours=0)
    kvs.create_stream(StreamName="live-cam", DataRetentionInHours=1)
    for start, _ in SPANS:  # the same 4 s twice, 96 s apart: a gap in the archive
        put_mkv(server.port, "front-door", synthetic.to_mkv(h264, start))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def archived(server):
    return server.client("kinesis-video-archived-media")


class Page:
    """A Playwright page that records script errors and saves screenshots by name."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def new_page(browser, **context_args):
    context_args.setdefault("viewport", {"width": 1280, "height": 800})
    context = browser.new_context(timezone_id="UTC", accept_downloads=True, **context_args)
    context.set_default_timeout(15_000)
    return context, Page(context.new_page())


@pytest.fixture
def page(browser):
    context, page = new_page(browser)
    yield page
    context.close()
    assert not page.errors


def open_stream(page: Page, server, query: str = "") -> None:
    page.page.goto(f"{server.endpoint}/#/stream/front-door{query}")
    settle(page)


def settle(page: Page) -> None:
    """Wait until the visible range's fragments and thumbnails are loaded and drawn."""
    page.page.wait_for_selector("#stream-view[data-ready]")
    page.page.wait_for_selector("#timeline:not([data-busy])", state="attached")
    page.page.wait_for_selector("#thumbs[data-ready]", state="attached")


def assert_fits_width(page: Page, width: int) -> None:
    """Nothing sticks out sideways once layout settles (a loaded machine may lay out late);
    if something does, name it."""
    try:
        # a function, not an expression: the page's CSP forbids the eval an expression
        # needs once it is polled
        page.page.wait_for_function("w => document.documentElement.scrollWidth <= w",
                                    arg=width, timeout=5000)
    except PlaywrightTimeoutError:
        wide = page.page.evaluate(f"""[...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > {width})
            .map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)""")
        raise AssertionError(f"wider than {width} px: {wide}") from None


def tiles(page: Page) -> list[dict]:
    return page.page.eval_on_selector_all("#thumbs .tile", """tiles => tiles.map(t => ({
        ts: Number(t.dataset.ts), state: t.dataset.state,
        src: t.querySelector('img')?.src || null,
        box: t.getBoundingClientRect().toJSON()}))""")


# -- the page ---------------------------------------------------------------------------------

def test_stream_list(page, server, archived):
    page.page.goto(server.endpoint + "/")
    page.page.wait_for_selector("#list-view[data-ready]")
    page.page.wait_for_function(
        "() => !document.querySelector('#streams .pending')")
    rows = page.page.eval_on_selector_all("#streams tbody tr", """rows => rows.map(r => ({
        name: r.dataset.stream,
        codec: r.querySelector('.codec').textContent,
        retention: r.querySelector('.retention').textContent,
        last: r.querySelector('.last').textContent,
        lastMs: r.querySelector('.last').dataset.ms,
        size: r.querySelector('.size').textContent,
        bytes: r.querySelector('.size').dataset.bytes}))""")
    page.shot("01-stream-list")
    assert [row["name"] for row in rows] == STREAMS
    by_name = {row["name"]: row for row in rows}
    front = by_name["front-door"]
    fragments = archived.list_fragments(StreamName="front-door", MaxResults=1000)["Fragments"]
    assert front["codec"] == "video/h264" and front["retention"] == "1 d"
    assert int(front["bytes"]) == sum(f["FragmentSizeInBytes"] for f in fragments)
    newest = max(round(f["ProducerTimestamp"].timestamp() * 1000)
                 + f["FragmentLengthInMilliseconds"] for f in fragments)
    assert int(front["lastMs"]) == newest == SPANS[1][1]
    assert "h ago" in front["last"]
    assert by_name["back-yard"]["codec"] == "—" and by_name["back-yard"]["retention"] == "2 d"
    assert (by_name["back-yard"]["last"], by_name["back-yard"]["size"]) == ("never", "0 B")
    assert by_name["no-retention"]["retention"] == "none"

    page.page.fill("#stream-filter", "door")
    assert page.page.eval_on_selector_all(
        "#streams tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.stream)") == \
        ["front-door"]
    page.page.click("#streams tbody tr[data-stream=front-door] a")
    page.page.wait_for_selector("#stream-view[data-ready]")
    assert page.page.evaluate("location.hash").startswith("#/stream/front-door")


def test_timeline_shows_the_gap_and_the_right_thumbnails(page, server, archived):
    open_stream(page, server)
    page.shot("02-timeline")
    spans = page.page.eval_on_selector_all("#track .span", """spans => spans.map(s => ({
        start: Number(s.dataset.start), end: Number(s.dataset.end),
        box: s.getBoundingClientRect().toJSON()}))""")
    assert [(s["start"], s["end"]) for s in spans] == SPANS
    first, second = (s["box"] for s in spans)
    timeline = page.page.eval_on_selector("#timeline", "t => t.getBoundingClientRect().toJSON()")
    px_per_ms = first["width"] / 4000
    gap_px = second["left"] - first["right"]
    assert gap_px == pytest.approx(96_000 * px_per_ms, rel=0.02)  # empty space, to scale
    assert gap_px > 0.8 * timeline["width"]
    assert timeline["left"] <= first["left"] and second["right"] <= timeline["right"]

    # Thumbnails: an image where there is media, a blank tile in the gap.
    shown = tiles(page)
    assert len(shown) >= 5
    assert all(t["state"] == ("image" if in_media(t["ts"]) else "blank") for t in shown)
    assert sum(t["state"] == "image" for t in shown) >= 2
    assert sum(t["state"] == "blank" for t in shown) >= 3
    assert_thumbnails_are_getimages(page, archived, shown)

    # Zoom into the first recording (wheel over it): the thumbnails follow the zoom.
    interval = int(page.page.get_attribute("#thumbs", "data-interval"))
    x = first["left"] + first["width"] / 2
    page.page.mouse.move(x, first["top"] + first["height"] / 2)
    for _ in range(6):
        page.page.mouse.wheel(0, -300)
    page.page.wait_for_function(
        """limit => !document.querySelector('#timeline').dataset.busy &&
                    Number(document.querySelector('#thumbs').dataset.interval) < limit""",
        arg=interval / 4)
    page.shot("03-timeline-zoomed")
    zoomed = tiles(page)
    view = page.page.evaluate("() => new URLSearchParams(location.hash.split('?')[1])"
                              ".toString()")
    start, end = (int(v.split("=")[1]) for v in view.split("&"))
    assert end - start < (SPANS[1][1] - SPANS[0][0]) / 4
    new_interval = int(page.page.get_attribute("#thumbs", "data-interval"))
    assert all(start - new_interval <= t["ts"] <= end + new_interval for t in zoomed)
    assert sum(t["state"] == "image" for t in zoomed) >= 5
    assert all(t["state"] == ("image" if in_media(t["ts"]) else "blank") for t in zoomed)
    assert_thumbnails_are_getimages(page, archived, zoomed[:6])


def assert_thumbnails_are_getimages(page: Page, archived, shown: list[dict]) -> None:
    """Each thumbnail is GetImages' image for its time: same bytes, and the picture the
    browser decoded matches the one PIL decodes (PSNR >= 40)."""
    for tile in (t for t in shown if t["state"] == "image"):
        got = base64.b64decode(tile["src"].split(",", 1)[1])
        [image] = archived.get_images(
            StreamName="front-door", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=tile["ts"] / 1000, EndTimestamp=tile["ts"] / 1000,
            SamplingInterval=3000, Format="JPEG", WidthPixels=160)["Images"]
        expected = base64.b64decode(image["ImageContent"])
        assert got == expected, tile["ts"]
        rendered = page.page.evaluate("""ts => {
            const img = document.querySelector(`.tile[data-ts="${ts}"] img`);
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            canvas.getContext('2d').drawImage(img, 0, 0);
            return canvas.toDataURL('image/png');  // lossless: the pixels Chromium decoded
        }""", tile["ts"])
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(rendered.split(",", 1)[1])))
                            .convert("RGB"))
        reference = np.asarray(Image.open(io.BytesIO(expected)).convert("RGB"))
        assert psnr(pixels, reference) >= 40, tile["ts"]


def test_click_plays_hls_from_that_time(page, server):
    open_stream(page, server)
    box = page.page.locator("#track .span").first.bounding_box()
    page.page.mouse.click(box["x"] + 2, box["y"] + box["height"] / 2)  # the first fragment
    page.page.wait_for_function("() => document.querySelector('video').currentTime > 0.5")
    first = page.page.evaluate("document.querySelector('video').currentTime")
    # it keeps playing: wait for the time to advance instead of sleeping and hoping
    page.page.wait_for_function(
        "t => document.querySelector('video').currentTime > t", arg=first + 0.5)
    state = page.page.evaluate("""() => {
        const v = document.querySelector('video');
        return {t: v.currentTime, paused: v.paused, w: v.videoWidth,
                mode: document.querySelector('#player').dataset.mode,
                url: document.querySelector('#player').dataset.url,
                playhead: !document.querySelector('#playhead').hidden};
    }""")
    page.shot("04-playing")
    assert state["t"] > first + 0.5 and not state["paused"]
    assert state["w"] == 320 and state["mode"] == "LIVE_REPLAY" and state["playhead"]
    assert state["url"].startswith(f"{server.endpoint}/hls/")
    page.page.click("#close-player")
    assert page.page.is_hidden("#player")


def test_live_button_plays_what_is_being_recorded(page, server):
    video = synthetic.encode_video("h264", seconds=10, gop=25, bframes=0)
    now_ms = int(time.time() * 1000)
    conn = PutMediaConnection(server.port, "live-cam")
    stop = threading.Event()

    def camera():  # three seconds at once, then one fragment a second, like a camera
        conn.send(mkv.write_header(synthetic.stream_header(video)))
        for i, cluster in enumerate(synthetic.clusters(video, now_ms - 3000)):
            conn.send(mkv.write_cluster(cluster)[0])
            if i >= 3 and stop.wait(max(0.0, (now_ms + (i - 3) * 1000) / 1000 - time.time())):
                break
        conn.finish()

    producer = threading.Thread(target=camera, daemon=True)
    producer.start()
    try:
        conn.wait_for("PERSISTED", 3)
        page.page.goto(f"{server.endpoint}/#/stream/live-cam")
        settle(page)
        page.page.click("#play-live")
        page.page.wait_for_function("() => document.querySelector('video').currentTime > 0.5")
        first = page.page.evaluate("document.querySelector('video').currentTime")
        page.page.wait_for_function(  # it keeps playing live
            "t => document.querySelector('video').currentTime > t", arg=first + 0.7)
        state = page.page.evaluate("""() => ({
            t: document.querySelector('video').currentTime,
            paused: document.querySelector('video').paused,
            mode: document.querySelector('#player').dataset.mode,
            badge: document.querySelector('#player-mode').textContent,
            playhead: document.querySelector('#playhead').getBoundingClientRect().left,
            spans: [...document.querySelectorAll('#track .span')].map(
                s => s.getBoundingClientRect().toJSON())})""")
        page.shot("05-playing-live")
        assert state["t"] > first + 0.7 and not state["paused"]
        assert (state["mode"], state["badge"]) == ("LIVE", "LIVE")
        # the playhead is on the producer clock, inside what was recorded
        [span] = state["spans"]
        assert span["left"] <= state["playhead"] <= span["right"] + 2
    finally:
        stop.set()
        producer.join(timeout=15)
        conn.close()


def test_save_images_downloads_a_zip(page, server, archived):
    open_stream(page, server)
    page.page.click("#save-images")
    form = page.page.locator("#images-form")
    start, end, interval = START_MS - 1000, SPANS[1][0] + 1999, 500
    form.locator("[name=start]").fill(local_input(start))
    form.locator("[name=end]").fill(local_input(end))
    form.locator("[name=interval]").fill(str(interval / 1000))
    form.locator("[name=width]").fill("160")
    form.locator("[name=format]").select_option("JPEG")
    samples = list(range(start, end + 1, interval))
    expected = [t for t in samples if in_media(t)]
    assert f"(UTC+00:00). {len(samples)} sample times" in \
        page.page.text_content("#images-estimate")
    page.shot("06-save-images-dialog")
    with page.page.expect_download() as info:
        page.page.click("#images-go")
    download = info.value
    page.page.wait_for_selector("#images-dialog[data-saved]")
    page.shot("07-save-images-done")
    assert download.suggested_filename.startswith("front-door_") and \
        download.suggested_filename.endswith(".zip")
    with zipfile.ZipFile(download.path()) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(expected) == 8 + 4
        stamps = [dt.datetime.strptime(n.removeprefix("front-door_").removesuffix(".jpg"),
                                       "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.timezone.utc)
                  for n in names]
        assert [round(s.timestamp() * 1000) for s in stamps] == expected
        [image] = archived.get_images(
            StreamName="front-door", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=expected[3] / 1000, EndTimestamp=expected[3] / 1000,
            SamplingInterval=3000, Format="JPEG", WidthPixels=160)["Images"]
        assert archive.read(names[3]) == base64.b64decode(image["ImageContent"])
    assert f"Saved {len(expected)} images" in page.page.text_content("#images-status")


def test_save_clip_downloads_an_mp4(page, server):
    open_stream(page, server)
    page.page.click("#save-clip")
    form = page.page.locator("#clip-form")
    form.locator("[name=start]").fill(local_input(START_MS))
    form.locator("[name=end]").fill(local_input(START_MS + 2500))
    page.shot("08-save-clip-dialog")
    with page.page.expect_download() as info:
        page.page.click("#clip-go")
    download = info.value
    assert download.suggested_filename.endswith(".mp4")
    data = Path(download.path()).read_bytes()
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 75  # fragments starting in [start, start + 2.5 s]: three 1 s GOPs


def stream_details(page: Page) -> dict[str, tuple[str, str, str]]:
    """The stream page's details once every value has arrived: key -> (label, value, hover)."""
    page.page.wait_for_selector("#stream-details:not([hidden])")
    page.page.wait_for_function(
        "() => !document.querySelector('#stream-details dd[data-state=pending]')")
    return {item["key"]: (item["label"], item["value"], item["title"])
            for item in page.page.eval_on_selector_all("#stream-details > div", """items =>
                items.map(i => ({key: i.dataset.detail,
                                 label: i.querySelector('dt').textContent,
                                 value: i.querySelector('dd').textContent,
                                 title: i.querySelector('dd').title}))""")}


def test_stream_page_shows_image_generation_and_notifications(page, browser, server):
    kvs = server.client("kinesisvideo")
    kvs.update_image_generation_configuration(StreamName="back-yard", ImageGenerationConfiguration={
        "Status": "ENABLED", "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "DestinationConfig": {"Uri": "s3://bucket/thumbs", "DestinationRegion": "us-east-1"},
        "SamplingInterval": 3000, "Format": "JPEG", "FormatConfig": {"JPEGQuality": "80"},
        "WidthPixels": 160, "HeightPixels": 120})
    kvs.update_notification_configuration(StreamName="back-yard", NotificationConfiguration={
        "Status": "DISABLED", "DestinationConfig": {"Uri": "https://example.com/hook"}})
    images = "ENABLED — JPEG every 3 s (producer time), 160×120, quality 80 → s3://bucket/thumbs"
    expected = {
        "codec": ("Codec", "—", ""),
        "retention": ("Retention", "2 d", ""),
        "images": ("Images", images, "Region us-east-1"),
        "notifications": ("Notifications", "DISABLED → https://example.com/hook", ""),
    }
    page.page.goto(f"{server.endpoint}/#/stream/back-yard")
    page.page.wait_for_selector("#stream-view[data-ready]")
    assert stream_details(page) == expected
    page.shot("17-stream-details")

    # Another stream's page forgets them; coming back shows them again.
    for name, images_shown in (("front-door", "not configured"), ("back-yard", images)):
        page.page.goto(f"{server.endpoint}/#/stream/{name}")  # same document: hashchange
        page.page.wait_for_function("name => document.title.startsWith(name)", arg=name)
        page.page.wait_for_selector("#stream-view[data-ready]")
        assert stream_details(page)["images"][1] == images_shown

    # On a phone: a row each, wrapped inside the screen.
    context, phone = new_page(browser, viewport={"width": 390, "height": 844},
                              device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        phone.page.goto(f"{server.endpoint}/#/stream/back-yard")
        phone.page.wait_for_selector("#stream-view[data-ready]")
        assert stream_details(phone) == expected
        phone.shot("18-phone-stream-details")
        assert_fits_width(phone, 390)
        boxes = phone.page.eval_on_selector_all(
            "#stream-details dd", "dds => dds.map(d => d.getBoundingClientRect().toJSON())")
        assert all(0 <= b["left"] and b["right"] <= 390 for b in boxes)
        assert len({b["top"] for b in boxes}) == len(boxes)  # one row each
        assert not phone.errors
    finally:
        context.close()


def test_stream_page_without_settings_or_when_they_fail(page, server):
    open_stream(page, server)
    details = stream_details(page)
    assert details["codec"][1:] == ("video/h264", "")
    assert details["retention"][1:] == ("1 d", "")
    assert details["images"][1:] == ("not configured", "")
    assert details["notifications"][1:] == ("not configured", "")

    # A failing Describe*Configuration shows "unavailable" there, and the page works on.
    page.page.route("**/describeNotificationConfiguration", lambda route: route.fulfill(
        status=500, headers={"x-amzn-ErrorType": "InternalFailure"},
        content_type="application/json", body='{"message": "broken on purpose"}'))
    page.page.route("**/describeImageGenerationConfiguration", lambda route: route.abort())
    page.page.reload()
    settle(page)
    details = stream_details(page)
    page.shot("19-stream-details-unavailable")
    assert details["notifications"][1:] == ("unavailable", "InternalFailure: broken on purpose")
    assert details["images"][1] == "unavailable"
    assert details["images"][2].startswith("NetworkError: Cannot reach the server")
    assert details["codec"][1] == "video/h264"
    assert len(page.page.query_selector_all("#track .span")) == 2
    assert page.page.query_selector_all("#thumbs .tile[data-state=image]")
    assert page.page.is_hidden("#error")


def test_phone_sized_screen(browser, server):
    context, page = new_page(browser, viewport={"width": 390, "height": 844},
                             device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page.page.goto(server.endpoint + "/")
        page.page.wait_for_selector("#list-view[data-ready]")
        page.page.wait_for_function("() => !document.querySelector('#streams .pending')")
        page.shot("09-phone-stream-list")
        assert_fits_width(page, 390)
        page.page.tap("#streams tbody tr[data-stream=front-door] a")
        settle(page)
        page.shot("10-phone-timeline")
        assert_fits_width(page, 390)
        box = page.page.eval_on_selector("#timeline", "t => t.getBoundingClientRect().toJSON()")
        assert box["left"] >= 0 and box["right"] <= 390 and box["width"] > 300
        assert len(page.page.query_selector_all("#track .span")) == 2
        assert page.page.query_selector_all("#thumbs .tile[data-state=image]")
        for button in ("#zoom-in", "#save-images", "#save-clip", "#play-live"):
            b = page.page.eval_on_selector(button, "b => b.getBoundingClientRect().toJSON()")
            assert b["right"] <= 390 and b["height"] >= 32, button
        # Pinch out on the timeline: zooms in around the fingers, thumbnails follow.
        interval = int(page.page.get_attribute("#thumbs", "data-interval"))
        cdp = context.new_cdp_session(page.page)
        y, x = box["top"] + box["height"] / 2, box["left"] + box["width"] / 2

        def touch(kind: str, spread: float) -> None:
            points = [] if kind == "touchEnd" else [
                {"x": x - spread, "y": y, "id": 0}, {"x": x + spread, "y": y, "id": 1}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

        touch("touchStart", 20)
        for spread in range(30, 150, 10):
            touch("touchMove", spread)
        touch("touchEnd", 0)
        page.page.wait_for_function(
            """limit => !document.querySelector('#timeline').dataset.busy &&
                        Number(document.querySelector('#thumbs').dataset.interval) < limit""",
            arg=interval / 4)
        assert page.page.is_hidden("#player")  # a pinch is not a tap
        page.shot("11-phone-pinched")
        page.page.locator("#zoom-fit").tap()
        settle(page)
        page.page.locator("#thumbs .tile[data-state=image]").first.tap()
        page.page.wait_for_function("() => document.querySelector('video').currentTime > 0.5")
        page.shot("12-phone-playing")
        page.page.tap("#close-player")
        page.page.tap("#save-images")
        page.shot("13-phone-save-images")
        dialog = page.page.eval_on_selector("#images-dialog",
                                            "d => d.getBoundingClientRect().toJSON()")
        assert dialog["left"] >= 0 and dialog["right"] <= 390
        assert not page.errors
    finally:
        context.close()


def test_signed_requests_when_the_server_wants_credentials(browser, start_server, h264):
    """A server with keys and AWS's 3000 ms GetImages minimum: the page asks for the keys,
    signs every call, and keeps to the minimum the server told it."""
    anonymous = start_server()  # record first, then restart the same archive with keys
    anonymous.client("kinesisvideo").create_stream(StreamName="locked", DataRetentionInHours=24)
    put_mkv(anonymous.port, "locked", synthetic.to_mkv(h264, START_MS))
    anonymous.stop()
    server = start_server("--access-key-id", "AKIDWEBVIEWER", "--secret-access-key", "s3cret",
                          "--region", "eu-west-1", data_dir=anonymous.data_dir)
    context, page = new_page(browser)
    try:
        page.page.goto(server.endpoint + "/")
        page.page.wait_for_selector("#credentials-dialog[open]")
        form = page.page.locator("#credentials-form")
        form.locator("[name=accessKeyId]").fill("AKIDWEBVIEWER")
        form.locator("[name=secretAccessKey]").fill("wrong")
        form.locator("[name=region]").fill("eu-west-1")
        form.locator("button[type=submit]").click()
        page.page.wait_for_selector("#credentials-dialog[open]")
        assert "refused" in page.page.text_content("#credentials-reason")
        page.shot("14-credentials-refused")
        form.locator("[name=secretAccessKey]").fill("s3cret")
        form.locator("button[type=submit]").click()
        page.page.wait_for_selector("#list-view[data-ready]")
        assert page.page.eval_on_selector_all(
            "#streams tbody tr", "rows => rows.map(r => r.dataset.stream)") == ["locked"]
        assert page.page.evaluate("JSON.parse(sessionStorage['kvslite.credentials']).region") \
            == "eu-west-1"
        page.page.wait_for_function("() => !document.querySelector('#streams .pending')")
        assert page.page.text_content("#streams .last").startswith(  # ListFragments, signed
            dt.datetime.fromtimestamp((START_MS + 4000) / 1000, dt.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S"))
        page.shot("15-credentials-accepted")

        page.page.click("#streams tbody tr[data-stream=locked] a")
        settle(page)
        assert page.page.get_attribute("#thumbs", "data-interval") == "3000"
        shown = tiles(page)
        images = [t["ts"] for t in shown if t["state"] == "image"]
        assert images and all(START_MS <= ts < START_MS + 4000 for ts in images)
        # 3 s slots: an image from each slot's middle, or its first archived instant
        assert all(ts % 3000 in (0, 1500) or ts == START_MS for ts in images)
        page.shot("16-signed-timeline")
        # the configurations are asked for with the same signed client
        details = stream_details(page)
        assert (details["images"][1], details["notifications"][1]) == \
            ("not configured", "not configured")
        page.page.click("#thumbs .tile[data-state=image]")
        page.page.wait_for_function("() => document.querySelector('video').currentTime > 0.5")
    finally:
        context.close()


def test_thumbnails_on_a_server_with_default_flags(browser, start_server, h264):
    """A new user's server (`kvslite serve`, `kvslite demo`) keeps AWS's 3000 ms minimum
    SamplingInterval. The page gets it from the server: every GetImages it sends keeps to
    it, and a stream recorded twice, 96 s apart, shows thumbnails of both recordings."""
    server = start_server()
    server.client("kinesisvideo").create_stream(StreamName="front-door",
                                                DataRetentionInHours=24)
    for start, _ in SPANS:
        put_mkv(server.port, "front-door", synthetic.to_mkv(h264, start))
    context, page = new_page(browser)
    intervals: list[int] = []
    page.page.on("request", lambda r: intervals.append(r.post_data_json["SamplingInterval"])
                 if r.url.endswith("/getImages") else None)
    try:
        page.page.goto(f"{server.endpoint}/#/stream/front-door")
        page.page.wait_for_selector("#stream-view[data-ready]")
        page.page.wait_for_selector("#timeline:not([data-busy])", state="attached")
        page.shot("17-default-flags-timeline")
        assert page.page.is_hidden("#error"), page.page.text_content("#error")
        assert page.page.get_attribute("#thumbs", "data-ready") is not None
        assert int(page.page.get_attribute("#thumbs", "data-interval")) >= 3000
        shown = tiles(page)
        images = [t["ts"] for t in shown if t["state"] == "image"]
        assert all(in_media(ts) for ts in images)
        assert all(any(start <= ts < end for ts in images) for start, end in SPANS)
        assert intervals and min(intervals) >= 3000
        assert not page.errors
    finally:
        context.close()


# -- serving the files ------------------------------------------------------------------------

def raw(server, method: str, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            response.read()
    finally:
        conn.close()


def test_files_are_served_with_types_caching_and_no_traversal(server):
    status, headers, body = raw(server, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"/web/app.js" in body and headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert raw(server, "GET", "/", {"if-none-match": headers["etag"]})[0] == 304

    status, headers, body = raw(server, "GET", "/web/limits.js")  # this server's setting
    assert status == 200 and b"export const MIN_SAMPLING_INTERVAL_MS = 1;\n" in body

    status, headers, _ = raw(server, "GET", "/web/app.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert raw(server, "GET", "/web/style.css")[1]["content-type"] == "text/css; charset=utf-8"

    vendor = sorted(p.name for p in (Path(__file__).parents[1] / "src/kvslite/server/web/static/vendor")
                    .glob("hls-*.min.js"))
    assert vendor == ["hls-1.7.4.min.js"]
    status, headers, body = raw(server, "GET", "/web/vendor/hls-1.7.4.min.js",
                                {"accept-encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert int(headers["content-length"]) == len(body) < 300_000
    status, headers, body = raw(server, "HEAD", "/web/app.js")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000

    for path in ("/web/../__init__.py", "/web/%2e%2e/__init__.py", "/web/__init__.py",
                 "/web/..%2f..%2fconfig.py", "/web/vendor/../../server.py", "/etc/passwd",
                 "/web/", "/web", "/web/vendor/"):
        status, headers, body = raw(server, "GET", path)
        assert status == 404 and headers["x-amzn-errortype"] == "UnknownOperationException", path
        assert b"import" not in body
    status, headers, body = raw(server, "POST", "/")  # IAM and STS answer there, not the page
    assert status == 400 and b"<ErrorResponse" in body and b"<!doctype" not in body.lower()
    status, headers, _ = raw(server, "PUT", "/")
    assert status == 405 and headers["x-amzn-errortype"] == "MethodNotAllowedException"
    status, headers, _ = raw(server, "POST", "/noSuchOperation")  # API paths are unchanged
    assert status == 404 and headers["x-amzn-errortype"] == "UnknownOperationException"
