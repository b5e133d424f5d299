"""`kvslite images`: GetImages from the command line, one file per sample time."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from kvs_media import psnr, put_mkv
from kvslite.client.image_fetcher import (file_name, format_time, parse_interval, parse_time,
                                  sample_count)
from kvslite.media import synthetic

START_MS = (int(time.time()) - 3600) * 1000 + 250  # an hour ago, off the whole second
STREAM = "cli-images"


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers("--min-sampling-interval-ms", "1")


@pytest.fixture(scope="module")
def video(h264):
    return h264


@pytest.fixture(scope="module")
def stream(server, video):
    server.client("kinesisvideo").create_stream(StreamName=STREAM, DataRetentionInHours=24)
    acks = put_mkv(server.port, STREAM, synthetic.to_mkv(video, START_MS))
    assert sum(a["EventType"] == "PERSISTED" for a in acks) == 4
    return STREAM


def kvslite_images(server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "KVSLITE_ENDPOINT_URL": server.endpoint}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(name, None)  # no credentials anywhere: requests go unsigned
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return subprocess.run([sys.executable, "-m", "kvslite", "images", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_files_names_and_no_media(server, stream, tmp_path):
    """13 samples every 500 ms; the video covers the first 8, the last 5 are past it.
    --max-results 3 makes five pages, so NextToken is followed."""
    out = tmp_path / "frames"
    start_iso = format_time(START_MS)                # ISO 8601 with Z
    end_epoch = f"{(START_MS + 6000) / 1000:.3f}"    # epoch seconds
    got = kvslite_images(server, stream, "--start", start_iso, "--end", end_epoch,
                         "--every", "500ms", "--max-results", "3", "--out", str(out), "-q")
    assert got.returncode == 0, got.stderr
    names = sorted(os.listdir(out))
    assert names == [file_name(START_MS + 500 * k, ".jpg") for k in range(8)]
    assert names[0] == format_time(START_MS).replace(":", "-") + ".jpg"
    assert ":" not in "".join(names)
    assert "8 image(s) written" in got.stdout and "5 NO_MEDIA, 0 MEDIA_ERROR" in got.stdout
    assert (f"NO_MEDIA: 5 sample(s) at {format_time(START_MS + 4000)} .. "
            f"{format_time(START_MS + 6000)}") in got.stderr
    for name in names:
        assert (out / name).read_bytes()[:3] == b"\xff\xd8\xff"


def test_same_bytes_and_pixels_as_get_images(server, stream, video, tmp_path):
    t = START_MS + 2345  # mid-GOP: a B-frame region
    got = kvslite_images(server, stream, "--start", str(t / 1000), "--end", str(t / 1000),
                         "--quality", "90", "--out", str(tmp_path), "-q")
    assert got.returncode == 0, got.stderr
    [path] = tmp_path.iterdir()
    assert path.name == file_name(t)
    page = server.client("kinesis-video-archived-media").get_images(
        StreamName=stream, ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=t / 1000,
        EndTimestamp=t / 1000, Format="JPEG", FormatConfig={"JPEGQuality": "90"})
    [image] = page["Images"]
    assert path.read_bytes() == base64.b64decode(image["ImageContent"])
    # ... and it is the frame on screen at t (the last one with pts <= 2345 ms)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    reference = video.frames_rgb()
    shown = max(i for i, (pts, _) in enumerate(reference) if pts <= 2345)
    own = psnr(pixels, reference[shown][1])
    assert own > 30
    assert all(psnr(pixels, reference[n][1]) < own for n in (shown - 1, shown + 1))


def test_png_and_width(server, stream, tmp_path):
    got = kvslite_images(server, stream, "--start", str(START_MS / 1000), "--end",
                         str((START_MS + 1000) / 1000), "--every", "1s", "--format", "png",
                         "--width", "160", "--out", str(tmp_path), "-q")
    assert got.returncode == 0, got.stderr
    names = sorted(os.listdir(tmp_path))
    assert names == [file_name(START_MS, ".png"), file_name(START_MS + 1000, ".png")]
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(io.BytesIO(data)).size == (160, 120)  # height keeps 4:3


def test_selector_server_and_default_interval(server, stream, tmp_path):
    """No --every: the server's minimum (1 ms here); the progress total is learnt from it."""
    listing = server.client("kinesis-video-archived-media").list_fragments(StreamName=stream)
    first = min(f["ServerTimestamp"] for f in listing["Fragments"])
    t = round(first.timestamp() * 1000)
    got = kvslite_images(server, stream, "--selector", "server", "--start", str(t / 1000),
                         "--end", str((t + 2) / 1000), "--out", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert sorted(os.listdir(tmp_path)) == [file_name(t + k) for k in range(3)]
    assert "3/3" in got.stderr  # the tqdm bar: done/total


def test_relative_times(server, stream, tmp_path):
    """-2h .. now every 10m: 13 samples; the 4 s video an hour ago falls between them."""
    got = kvslite_images(server, stream, "--start", "-2h", "--end", "now", "--every", "10m",
                         "--out", str(tmp_path), "-q")
    assert got.returncode == 0, got.stderr
    written = len(os.listdir(tmp_path))
    assert f"{written} image(s) written" in got.stdout
    assert f"{13 - written} NO_MEDIA" in got.stdout and written <= 1


@pytest.mark.slow
def test_api_errors_exit_nonzero(server, stream, tmp_path):
    got = kvslite_images(server, "no-such-stream", "--start", "-1m", "--end", "now",
                         "--out", str(tmp_path), "-q")
    assert got.returncode == 1
    assert "ResourceNotFoundException" in got.stderr, got.stderr
    assert "Traceback" not in got.stderr
    server.client("kinesisvideo").create_stream(StreamName="cli-no-retention",
                                                DataRetentionInHours=0)
    got = kvslite_images(server, "cli-no-retention", "--start", "-1m", "--end", "now",
                         "--out", str(tmp_path), "-q")
    assert got.returncode == 1
    assert "GetImages failed: NoDataRetentionException" in got.stderr, got.stderr
    # bad input is a usage error (2), refused before any call
    got = kvslite_images(server, stream, "--start", "-1m", "--end", "now", "--every", "0",
                         "--out", str(tmp_path), "-q")
    assert got.returncode == 2 and "--every" in got.stderr
    got = kvslite_images(server, stream, "--start", "yesterday", "--end", "now",
                         "--out", str(tmp_path), "-q")
    assert got.returncode == 2 and "--start" in got.stderr and "not a time" in got.stderr
    got = kvslite_images(server, stream, "--start", "now", "--end", "-1h",
                         "--out", str(tmp_path), "-q")
    assert got.returncode == 2 and "after --end" in got.stderr


NOW = 1_795_760_691_496  # 2026-11-27T06:24:51.496Z


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("-10m", NOW - 600_000),
    ("-90s", NOW - 90_000),
    ("-2h", NOW - 7_200_000),
    ("-1d", NOW - 86_400_000),
    ("-500ms", NOW - 500),
    ("-1h30m", NOW - 5_400_000),
    ("now-5m", NOW - 300_000),
    ("+1s", NOW + 1000),
    ("2026-11-27T06:24:51.496Z", NOW),
    ("2026-11-27T06:24:51.496", NOW),  # naive = UTC
    ("2026-11-27T07:24:51.496+01:00", NOW),
    ("2026-11-27T06-24-51.496Z", NOW),  # a file name's stem
    ("2026-11-27", NOW - (6 * 3600 + 24 * 60 + 51) * 1000 - 496),
    ("1795760691.496", NOW),
    ("1795760691", NOW - 496),
])
def test_parse_time(text, expected):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["-10x", "10m", "yesterday", "-", ""])
def test_parse_time_rejects(text):
    with pytest.raises(ValueError):
        parse_time(text, NOW)


def test_parse_time_defaults_to_the_clock():
    before = round(time.time() * 1000)
    assert before - 600_000 <= parse_time("-10m") <= round(time.time() * 1000) - 600_000


@pytest.mark.parametrize("text, ms", [("3s", 3000), ("500ms", 500), ("1m", 60_000),
                                      ("3000", 3000), ("1.5s", 1500), ("2h", 7_200_000)])
def test_parse_interval(text, ms):
    assert parse_interval(text) == ms


@pytest.mark.parametrize("text", ["0", "-3s", "x", "3 seconds", ""])
def test_parse_interval_rejects(text):
    with pytest.raises(ValueError):
        parse_interval(text)


def test_names_and_counts():
    assert file_name(NOW) == "2026-11-27T06-24-51.496Z.jpg"
    assert file_name(NOW - 496, ".png") == "2026-11-27T06-24-51.000Z.png"
    assert format_time(NOW) == datetime(2026, 11, 27, 6, 24, 51, 496000, timezone.utc) \
        .isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert sample_count(0, 9999, 3000) == 4
    assert sample_count(0, 6000, 500) == 13
    assert sample_count(5, 5, 3000) == 1


class FakeArchive:
    """A stand-in kinesis-video-archived-media client: two pages, one refusal first."""

    def __init__(self):
        self.calls: list[dict] = []

    def get_images(self, **params):
        from botocore.exceptions import ClientError

        self.calls.append(params)
        if len(self.calls) == 1:
            raise ClientError({"Error": {"Code": "ClientLimitExceededException",
                                         "Message": "busy"}}, "GetImages")
        t = datetime(2026, 11, 27, 6, 24, 51, 496000, timezone.utc)
        jpeg = base64.b64encode(b"\xff\xd8\xff fake").decode()
        if "NextToken" not in params:
            return {"Images": [{"TimeStamp": t, "ImageContent": jpeg},
                               {"TimeStamp": t.replace(second=54), "Error": "MEDIA_ERROR"}],
                    "NextToken": "abc"}
        return {"Images": [{"TimeStamp": t.replace(second=57), "Error": "NO_MEDIA"},
                           {"TimeStamp": t.replace(minute=25, second=0), "Error": "NO_MEDIA"}]}


def test_fetch_images_from_python(tmp_path):
    from kvslite.client.image_fetcher import fetch_images

    client = FakeArchive()
    summary = fetch_images(client, "s", NOW, NOW + 9000, tmp_path / "out", interval_ms=3000,
                           image_format="png", width=64, progress=False)
    assert (summary.written, summary.no_media, summary.media_error) == (1, 2, 1)
    assert summary.total == summary.samples == 4 and summary.pages == 2
    assert summary.paths == [tmp_path / "out" / "2026-11-27T06-24-51.496Z.png"]
    assert summary.paths[0].read_bytes() == b"\xff\xd8\xff fake"
    assert summary.error_runs() == [("MEDIA_ERROR", NOW + 3000, NOW + 3000, 1),
                                    ("NO_MEDIA", NOW + 6000, NOW + 9000, 2)]
    first, retried, second = client.calls
    assert first == retried and "NextToken" not in first and second["NextToken"] == "abc"
    assert first["StartTimestamp"] == datetime(2026, 11, 27, 6, 24, 51, 496000, timezone.utc)
    assert (first["Format"], first["WidthPixels"], first["SamplingInterval"]) == ("PNG", 64, 3000)
    assert "FormatConfig" not in first and "HeightPixels" not in first


@pytest.mark.slow
def test_without_credentials_both_clients_go_unsigned(start_server, monkeypatch, tmp_path):
    """One credential policy for the image fetcher and the producer (kvslite.client.common): with
    no credentials anywhere their requests go unsigned, so a server that requires SigV4
    refuses both for the missing signature, not for a made-up key."""
    from kvslite.client.producer import HttpError, Producer

    server = start_server("--access-key-id", "AKIDEXAMPLE", "--secret-access-key", "secret")
    server.client("kinesisvideo").create_stream(StreamName="signed-only")
    got = kvslite_images(server, "signed-only", "--start", "-1m", "--end", "now",
                         "--out", str(tmp_path / "out"), "-q")
    assert got.returncode == 1, got.stderr
    assert "error: GetDataEndpoint failed: MissingAuthenticationTokenException" in got.stderr

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(HttpError) as refused:
        Producer("signed-only", endpoint_url=server.endpoint).data_endpoint()
    assert refused.value.code == "MissingAuthenticationTokenException"
