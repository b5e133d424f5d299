"""`GET /metrics`: Prometheus text with exact counts of what the server did."""

from __future__ import annotations

import time
import urllib.request

import pytest
from botocore.exceptions import ClientError
from kvs_media import put_mkv
from prometheus_client.parser import text_string_to_metric_families

from kvslite.media import synthetic


def scrape(server) -> dict[tuple, float]:
    with urllib.request.urlopen(f"{server.endpoint}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.slow
def test_metrics_count_what_happened(start_server, h264):
    server = start_server("--min-sampling-interval-ms", "100")
    kvs = server.client("kinesisvideo")
    archived = server.client("kinesis-video-archived-media")
    kvs.create_stream(StreamName="metered", DataRetentionInHours=1)
    start = int(time.time() * 1000) - 60_000
    put_mkv(server.port, "metered", synthetic.to_mkv(h264, start))
    sizes = [f["FragmentSizeInBytes"]
             for f in archived.list_fragments(StreamName="metered")["Fragments"]]
    page = archived.get_images(StreamName="metered", ImageSelectorType="PRODUCER_TIMESTAMP",
                               StartTimestamp=start / 1000, EndTimestamp=(start + 5000) / 1000,
                               SamplingInterval=1000, Format="JPEG")
    shown = sum(1 for image in page["Images"] if image.get("ImageContent"))
    for _ in range(2):
        with pytest.raises(ClientError):
            kvs.describe_stream(StreamName="absent")

    metrics = scrape(server)
    assert metrics[("kvslite_fragments_ingested_total", ())] == len(sizes) == 4
    assert metrics[("kvslite_ingested_bytes_total", ())] == sum(sizes)
    assert metrics[("kvslite_persisted_ack_seconds_count", ())] == 4
    assert metrics[("kvslite_getimages_requests_total", ())] == 1
    assert metrics[("kvslite_getimages_images_total", ())] == shown == 4  # t=4 s is past the end
    assert metrics[("kvslite_decode_seconds_count", ())] == 4  # one decode per fragment
    assert metrics[("kvslite_errors_total", (("code", "ResourceNotFoundException"),))] == 2
    assert metrics[("kvslite_open_connections", (("kind", "put_media"),))] == 0
    assert metrics[("kvslite_sweeper_lag_seconds", ())] == 0
    assert metrics[("kvslite_leases_lost_total", ())] == 0
