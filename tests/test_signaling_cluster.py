"""Signaling across the nodes of a cluster: a master and a viewer on two different
`kvslite serve` nodes sharing one PostgreSQL still reach each other (the hub's relay through
LISTEN/NOTIFY and a table), held messages wait for a master on any node, the newest master
wins across nodes, and the WebSocket goes through HAProxy as examples/local_cluster.py
configures it. Raw `websockets` clients, URLs presigned as the JS SDK presigns them."""

from __future__ import annotations

import asyncio
import json
import time

import psycopg
import pytest
from cluster_engines import free_ports, postgres_bin_dir
from engines import need
from local_cluster import HAProxy, haproxy_binary
from postgres_server import fresh_database
from test_signaling_ws import (
    KEY,
    SECRET,
    SIGNED,
    create_channel,
    until,
    master_url,
    offer,
    presign,
    received,
    viewer_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.slow  # two nodes on a real PostgreSQL

BIG = "QUJD" * 2560  # a 10,240-byte messagePayload: larger than a NOTIFY may carry


@pytest.fixture(scope="module")
def database(postgres_url):
    need(postgres_bin_dir() is not None, "PostgreSQL (Debian's postgresql package)")
    return fresh_database(postgres_url)


@pytest.fixture(scope="module")
def nodes(database, tmp_path_factory):
    """Two nodes on one fresh database (media in each node's own files: not used here)."""
    from conftest import ServerProcess

    root = tmp_path_factory.mktemp("signaling-cluster")
    pair = [ServerProcess(root / f"node{i}", "--database-url", database, *SIGNED,
                          "--access-log") for i in range(2)]
    for node in pair:
        node.start()
    yield pair
    for node in pair:
        node.stop()


async def nothing_more(socket, timeout: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await received(socket, timeout)


def answer(to: str, payload: str) -> str:
    return json.dumps({"action": "SDP_ANSWER", "recipientClientId": to,
                       "messagePayload": payload})


def test_a_viewer_and_a_master_on_different_nodes_signal_each_other(nodes):
    a, b = nodes
    arn = create_channel(a, "across")

    async def scenario():
        async with connect(master_url(b, arn)) as master, \
                connect(viewer_url(a, arn, "viewer-1")) as viewer:
            await viewer.send(offer("b2ZmZXI="))
            assert await received(master) == {"senderClientId": "viewer-1",
                                              "messageType": "SDP_OFFER",
                                              "messagePayload": "b2ZmZXI="}
            await master.send(answer("viewer-1", "YW5zd2Vy"))
            assert await received(viewer) == {"messageType": "SDP_ANSWER",
                                              "messagePayload": "YW5zd2Vy"}
            # the largest payload there is, both ways
            await viewer.send(offer(BIG))
            assert (await received(master))["messagePayload"] == BIG
            await master.send(answer("viewer-1", BIG))
            assert (await received(viewer))["messagePayload"] == BIG
            await nothing_more(master)  # each message once, though both nodes were told
            await nothing_more(viewer)
    asyncio.run(scenario())


def test_a_message_waits_for_a_master_connecting_on_another_node(nodes, database):
    a, b = nodes
    arn = create_channel(a, "held", ttl=30)

    async def scenario():
        async with connect(viewer_url(a, arn, "v")) as viewer:
            await viewer.send(offer("Zmlyc3Q="))
            await viewer.send(offer(BIG))
            # no master anywhere: both wait in the database
            await until(lambda: waiting_in_database(database, arn) == 2, "both rows")
            async with connect(master_url(b, arn)) as master:
                assert [(await received(master))["messagePayload"] for _ in range(2)] == [
                    "Zmlyc3Q=", BIG]
                await nothing_more(master)
                await master.send(answer("v", "YmFjaw=="))
                assert (await received(viewer))["messagePayload"] == "YmFjaw=="
    asyncio.run(scenario())


def test_a_newer_master_on_another_node_replaces_the_old_one(nodes):
    a, b = nodes
    arn = create_channel(a, "replaced")

    async def scenario():
        async with connect(master_url(a, arn)) as old:
            # Once the old master's first message comes through, its join (announced before
            # its messages are read) is in the database's notification order ahead of the
            # new master's.
            async with connect(viewer_url(b, arn, "probe")) as probe:
                await old.send(answer("probe", "cHJvYmU="))
                assert (await received(probe))["messagePayload"] == "cHJvYmU="
            async with connect(master_url(b, arn)) as new, \
                    connect(viewer_url(a, arn, "v")) as viewer:
                assert await received(old) == {"messageType": "GO_AWAY"}
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(old.recv(), 5)
                await viewer.send(offer("dG8tbmV3"))  # from node A, where the old one was
                assert (await received(new))["messagePayload"] == "dG8tbmV3"
                await nothing_more(new)
    asyncio.run(scenario())


def test_signaling_through_haproxy_reaches_two_nodes(nodes, tmp_path):
    need(haproxy_binary() is not None, "HAProxy (Debian's haproxy package)")
    a, b = nodes
    arn = create_channel(a, "balanced")
    (port,) = free_ports(1)
    haproxy = HAProxy(tmp_path, port, {"node0": a.port, "node1": b.port})
    haproxy.start()
    balancer = f"ws://127.0.0.1:{port}"

    async def scenario():
        async with connect(presign(balancer, {"X-Amz-ChannelARN": arn})) as master, \
                connect(presign(balancer, {"X-Amz-ChannelARN": arn,
                                           "X-Amz-ClientId": "v"})) as viewer:
            for i in range(3):
                await viewer.send(offer(f"b2ZmZXI{i}"))
                assert (await received(master))["messagePayload"] == f"b2ZmZXI{i}"
                await master.send(answer("v", f"YW5zd2Vy{i}"))
                assert (await received(viewer))["messagePayload"] == f"YW5zd2Vy{i}"
    try:
        asyncio.run(scenario())
    finally:
        haproxy.stop()
    # round robin: the master's upgrade went to one node, the viewer's to the other (each
    # is logged as it ends)
    deadline = time.monotonic() + 5
    while sorted(upgrades := [[op for op in ("ConnectAsMaster", "ConnectAsViewer")
                               if f"op={op} stream={arn} status=101" in node.output()]
                              for node in (a, b)]) != [["ConnectAsMaster"], ["ConnectAsViewer"]] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(upgrades) == [["ConnectAsMaster"], ["ConnectAsViewer"]]


async def goes_away(socket) -> None:
    assert await received(socket) == {"messageType": "GO_AWAY"}
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(socket.recv(), 5)


def delete_channel(node, arn: str) -> None:
    node.client("kinesisvideo", key=KEY, secret=SECRET).delete_signaling_channel(
        ChannelARN=arn)


def waiting_in_database(database: str, arn: str) -> int:
    with psycopg.connect(database) as conn:
        try:
            return conn.execute("SELECT count(*) FROM kvslite_signaling_messages "
                                "WHERE channel_arn = %s", (arn,)).fetchone()[0]
        except psycopg.errors.UndefinedTable:  # no node has used the database yet
            return 0


@pytest.mark.parametrize("via", [0, 1], ids=["sent-to-the-masters-node",
                                              "sent-to-the-viewers-node"])
def test_deleting_a_channel_ends_its_sockets_on_every_node(nodes, via):
    a, b = nodes
    arn = create_channel(a, f"doomed-{via}")

    async def scenario():
        async with connect(master_url(a, arn)) as master, \
                connect(viewer_url(b, arn, "v")) as viewer:
            await viewer.send(offer("b2ZmZXI="))  # both joined, on their two nodes
            assert (await received(master))["messagePayload"] == "b2ZmZXI="
            await asyncio.to_thread(delete_channel, nodes[via], arn)
            await asyncio.gather(goes_away(master), goes_away(viewer))
    asyncio.run(scenario())


def test_deleting_a_channel_drops_its_messages_waiting_in_the_database(nodes, database):
    a, _ = nodes
    arn = create_channel(a, "doomed-held", ttl=30)

    async def scenario():
        async with connect(viewer_url(a, arn, "v")) as viewer:
            await viewer.send(offer("Zmlyc3Q="))  # no master anywhere: it waits there
            deadline = time.monotonic() + 5
            while waiting_in_database(database, arn) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert waiting_in_database(database, arn) == 1
            await asyncio.to_thread(delete_channel, a, arn)  # the viewer's own node
            await goes_away(viewer)
        assert waiting_in_database(database, arn) == 0
    asyncio.run(scenario())


def test_a_node_without_sockets_announces_a_deletion_too(nodes, database, tmp_path):
    from conftest import ServerProcess

    a, b = nodes
    arn = create_channel(a, "doomed-elsewhere")
    third = ServerProcess(tmp_path / "node2", "--database-url", database, *SIGNED).start()

    async def scenario():
        async with connect(master_url(a, arn)) as master, \
                connect(viewer_url(b, arn, "v")) as viewer:
            await viewer.send(offer("b2ZmZXI="))  # both joined, on their two nodes
            assert (await received(master))["messagePayload"] == "b2ZmZXI="
            await asyncio.to_thread(delete_channel, third, arn)
            await asyncio.gather(goes_away(master), goes_away(viewer))
    try:
        asyncio.run(scenario())
    finally:
        third.stop()
