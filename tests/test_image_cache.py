"""The rendered-image cache: bounded, least recently used out first, and invisible in the
answers: cached and uncached GetImages give the same bytes, and a repeat decodes nothing."""

from __future__ import annotations


import pytest
from conftest import metric
from kvs_media import put_mkv

from kvslite.server.archive.image_cache import ImageCache, ImageKey
from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # a server per test

START_MS = 1_700_000_000_000


def key(n: int, quality: int = 80) -> ImageKey:
    return ImageKey("arn", "9" + "0" * 45 + "1", n, "JPEG", quality, None, None)


def test_the_cap_is_honoured_and_the_least_recently_used_go_first():
    cache = ImageCache(max_bytes=1000)
    for n in range(5):
        cache.put(key(n), bytes(300))
        assert cache.size <= 1000
    assert len(cache) == 3 and cache.size == 900  # 0 and 1 went to make room
    assert cache.get(key(0)) is None and cache.get(key(2)) == bytes(300)
    cache.put(key(5), bytes(300))  # 3 is now the least recently used, not 2
    assert cache.get(key(3)) is None and cache.get(key(2)) is not None
    cache.put(key(6), bytes(2000))  # larger than the whole cache: not kept
    assert cache.get(key(6)) is None and cache.size == 900
    assert cache.get(key(2, quality=70)) is None  # every parameter is part of the key


@pytest.fixture(scope="module")
def servers(module_servers, h264):
    cached = module_servers("--min-sampling-interval-ms", "100")
    uncached = module_servers("--min-sampling-interval-ms", "100", "--image-cache-mb", "0")
    for server in (cached, uncached):
        server.client("kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=1)
        put_mkv(server.port, "cam", synthetic.to_mkv(h264, START_MS))
    return cached, uncached


def get_images(server, **params) -> list[tuple]:
    page = server.client("kinesis-video-archived-media").get_images(
        StreamName="cam", ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=START_MS / 1000,
        EndTimestamp=(START_MS + 3900) / 1000, SamplingInterval=100, Format="JPEG", **params)
    return [(i["TimeStamp"], i.get("ImageContent")) for i in page["Images"]]


def test_a_repeat_is_served_from_the_cache_with_the_same_bytes(servers):
    cached, uncached = servers
    first = get_images(cached)
    decodes = metric(cached, "kvslite_decode_seconds_count")
    hits = metric(cached, "kvslite_image_cache_total", result="hit")
    again = get_images(cached)
    assert again == first and len(first) == 40 and all(content for _, content in first)
    assert metric(cached, "kvslite_decode_seconds_count") == decodes  # nothing decoded
    assert metric(cached, "kvslite_image_cache_total", result="hit") - hits == 40
    assert get_images(uncached) == first  # the cache changes nothing in the answer
    assert get_images(cached, WidthPixels=160) != first  # another size: made anew
    assert metric(cached, "kvslite_decode_seconds_count") > decodes
