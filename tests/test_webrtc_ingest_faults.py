"""WebRTC ingestion when things go wrong, against real `kvslite serve` nodes and coturn with
the Python master of tests/webrtc_master.py: a master that drops and rejoins, a storage
session's node killed (kill -9) in a two-node cluster on PostgreSQL and SeaweedFS, a
garbage SDP answer, and a master that answers but sends no media. What was archived
before a fault stays intact (ListFragments and the media's bytes); each session ends
within its bound and releases its lease (a fresh JoinStorageSession works right after)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from botocore.exceptions import ClientError
from conftest import metric
from kvs_media import wait_until
from postgres_server import fresh_database
from seaweed_server import REGION
from test_signaling_ws import create_channel
from webrtc_master import GOP, Master, enable_storage, encode_h264

pytestmark = pytest.mark.slow  # real-time media through coturn, seconds per run

NO_MEDIA_S = 15  # storage_sessions.NO_MEDIA_S: a silent master's session ends after it


def storage_stream(server, name: str) -> str:
    """A stream and a channel of `name`, the channel's media stored in the stream."""
    stream_arn = server.client("kinesisvideo").create_stream(
        StreamName=name, DataRetentionInHours=1)["StreamARN"]
    channel_arn = create_channel(server, name)
    enable_storage(server, channel_arn, stream_arn)
    return channel_arn


def archived(server, stream: str) -> dict[str, bytes]:
    """Every fragment of the stream, oldest first: number -> its media as GetMedia gives."""
    client = server.client("kinesis-video-archived-media")
    listed = sorted(client.list_fragments(StreamName=stream)["Fragments"],
                    key=lambda f: f["ProducerTimestamp"])
    return {f["FragmentNumber"]: client.get_media_for_fragment_list(
        StreamName=stream, Fragments=[f["FragmentNumber"]])["Payload"].read()
        for f in listed}


def at_least(server, stream: str, count: int) -> dict[str, bytes]:
    def enough():
        found = archived(server, stream)
        return found if len(found) >= count else None

    return wait_until(enough, timeout=20, what=f"{count} fragments of {stream}")


def storage_sessions(server) -> int:
    """The node's open storage sessions, from its /metrics (its log says each session's
    end, but only once per 10 s alike)."""
    return int(metric(server, "kvslite_storage_sessions"))


async def sessions_become(server, count: int, timeout: float = 20) -> None:
    await asyncio.to_thread(wait_until, lambda: storage_sessions(server) == count, timeout,
                            f"{count} storage sessions open")


def test_a_master_that_drops_and_rejoins_starts_a_new_fragment_run(coturn, start_server):
    server = start_server(*coturn.kvslite_args())
    channel_arn = storage_stream(server, "drop")

    async def scenario():
        first = Master(channel_arn)
        await first.connect(server)
        await first.answer(server, await first.join(server), encode_h264(8 * GOP))
        await first.stream(frames=3 * GOP)
        before = await asyncio.to_thread(at_least, server, "drop", 2)
        await first.close()  # mid-GOP: its socket and peer connection gone
        await sessions_become(server, 0)  # the last fragment flushed
        dropped = await asyncio.to_thread(archived, server, "drop")

        second = Master(channel_arn)
        await second.connect(server)
        try:
            await second.answer(server, await second.join(server), encode_h264(4 * GOP))
            await second.stream()
        finally:
            await second.close()
        await sessions_become(server, 0)
        return before, dropped

    before, dropped = asyncio.run(scenario())
    after = archived(server, "drop")
    # what was acknowledged before the drop is there, byte for byte
    assert {n: after[n] for n in before} == before
    assert {n: after[n] for n in dropped} == dropped
    # the rejoined master's media is a new run: a fragment per GOP it sent
    assert len(after) == len(dropped) + 4
    assert list(after)[:len(dropped)] == list(dropped)


@pytest.fixture
def two_nodes(postgres_url, seaweed, coturn, tmp_path):
    """Two nodes on one fresh database and bucket, ICE through coturn."""
    from conftest import ServerProcess

    bucket = f"kvs-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key,
           "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": REGION}
    args = ("--database-url", fresh_database(postgres_url),
            "--media-url", f"s3://{bucket}/media", "--s3-endpoint-url", seaweed.endpoint_url,
            *coturn.kvslite_args())
    nodes = [ServerProcess(tmp_path / f"node{i}", *args, env=env) for i in range(2)]
    for node in nodes:
        node.start()
    yield nodes
    for node in nodes:
        if node.proc is not None:
            node.stop()


def test_the_session_moves_to_a_live_node_when_its_node_is_killed(two_nodes):
    a, b = two_nodes
    channel_arn = storage_stream(a, "cam")

    async def scenario():
        master = Master(channel_arn)
        await master.connect(a)  # its WebSocket on A throughout
        try:
            await master.join(a)  # A hosts the session, until a newer join on B takes it
            await master.answer(b, await master.join(b), encode_h264(20 * GOP))
            await sessions_become(a, 0)  # A let go as B took over
            assert storage_sessions(b) == 1
            assert "ended (a newer JoinStorageSession on another node replaced it)" \
                in a.output()
            await master.stream(frames=3 * GOP)  # B records what the master sends A
            before = await asyncio.to_thread(at_least, b, "cam", 2)
            b.proc.kill()  # kill -9 of the node hosting the storage session
            b.proc.wait()
            b.proc = None
            killed = time.time()
            await master.hang_up()

            refusals = 0
            while True:  # the master rejoins through A: refused until B's lease expires
                assert time.time() - killed < 30, "B's lease never expired"  # TTL: 15 s
                try:
                    offer = await master.join(a)
                    break
                except ClientError as e:
                    assert e.response["Error"]["Code"] == "ClientLimitExceededException"
                    refusals += 1
                    await asyncio.sleep(1)
            await master.answer(a, offer, encode_h264(3 * GOP))
            await master.stream()
        finally:
            await master.close()
        await sessions_become(a, 0)
        return before, killed, refusals

    before, killed, refusals = asyncio.run(scenario())
    assert refusals >= 1
    after = archived(a, "cam")
    assert {n: after[n] for n in before} == before  # nothing acknowledged lost
    fragments = a.client("kinesis-video-archived-media").list_fragments(
        StreamName="cam")["Fragments"]
    later = [f for f in fragments if f["ProducerTimestamp"].timestamp() > killed]
    assert len(later) == 3  # the stream continues: a fragment per GOP after the rejoin


def test_garbage_and_silence_end_the_session_and_free_it(coturn, start_server):
    server = start_server(*coturn.kvslite_args())
    garbage_arn, silent_arn = storage_stream(server, "garbage"), storage_stream(server, "silent")

    async def garbage(master: Master) -> None:
        await master.join(server)
        await master.send("SDP_ANSWER", {"type": "answer", "sdp": "v=0 garbage"},
                          correlationId="answer-1")
        status = (await master.next("STATUS_RESPONSE"))["statusResponse"]
        assert status["correlationId"] == "answer-1"
        assert status["errorType"] == "InvalidArgumentException"
        assert status["description"].startswith(
            "the storage session could not use the SDP_ANSWER")

    async def silent(master: Master) -> None:
        await master.answer(server, await master.join(server), None)
        await asyncio.wait_for(master.connected.wait(), 15)  # connected, sends nothing
        deadline = time.monotonic() + NO_MEDIA_S + 5
        while master.pc.connectionState not in ("closed", "failed"):  # the peer hung up
            assert time.monotonic() < deadline, master.pc.connectionState
            await asyncio.sleep(0.1)

    async def scenario():
        masters = [Master(garbage_arn), Master(silent_arn)]
        try:
            for master in masters:
                await master.connect(server)
            joined = time.monotonic()
            await asyncio.gather(garbage(masters[0]), silent(masters[1]))
            await sessions_become(server, 0, timeout=NO_MEDIA_S + 5)
            assert time.monotonic() - joined < NO_MEDIA_S + 3  # within their bound
            for master in masters:  # fresh sessions: the ended ones let go of everything
                await master.hang_up()
                await master.join(server)
            await sessions_become(server, 2)
        finally:
            for master in masters:
                await master.close()
        await sessions_become(server, 0)

    asyncio.run(scenario())
    output = server.output()
    assert f"ended (the master sent no media for {NO_MEDIA_S} s)" in output
    assert "Traceback" not in output
