"""AWS's WebRTC JS SDK against a kvslite cluster: the MASTER page and the VIEWER page of
tests/test_webrtc_js.py, their signaling WebSockets on two different nodes behind HAProxy.

Two `kvslite serve` nodes share one PostgreSQL (signaling crosses between them through it;
no media is stored, so no SeaweedFS) behind examples/local_cluster.py's HAProxy, which
terminates TLS (the SDK speaks wss:// only) and balances round-robin. SigV4 is on, the pages
come from another origin (CORS) and ICE is relayed through coturn. The master opens
everything through the balancer; once its WebSocket is up and kvslite's /metrics says on
which node, the viewer's WebSocket goes to the other node through one of HAProxy's pinned
ports (see HAProxy), its API calls through the balancer as the master's.
"""

from __future__ import annotations

import re
import time
import urllib.request

import boto3
import pytest
from botocore.config import Config
from cluster_engines import free_ports, postgres_bin_dir
from conftest import REGION, ServerProcess
from engines import need
from local_cluster import HAProxy, haproxy_binary
from postgres_server import fresh_database
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

pytestmark = pytest.mark.slow  # PostgreSQL, two nodes, HAProxy, coturn and a browser

need(ESBUILD.exists(), NPM_PACKAGES)
NODES = ("node0", "node1")
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


class Cluster:
    """The balancer's HTTPS URL, the nodes by name, their pinned ports, the channel."""

    def __init__(self, https: str, nodes: dict[str, ServerProcess], haproxy: HAProxy,
                 channel_arn: str):
        self.https, self.nodes, self.channel_arn = https, nodes, channel_arn
        self.pinned = haproxy.pinned_ports


@pytest.fixture
def cluster(postgres_url, certificate, coturn, page_origin, tmp_path):
    """Two nodes on one database behind HAProxy with TLS; `cluster.https` is the balancer,
    `cluster.pinned[name]` the port where HAProxy sends everything to that node."""
    need(postgres_bin_dir() is not None, "PostgreSQL (Debian's postgresql package)")
    need(haproxy_binary() is not None, "HAProxy (Debian's haproxy package)")
    cert, key = certificate
    pem = tmp_path / "haproxy.pem"  # HAProxy wants the certificate and its key in one file
    pem.write_text(cert.read_text() + key.read_text())
    balancer, *pinned = free_ports(1 + len(NODES))
    https = f"https://127.0.0.1:{balancer}"
    database = fresh_database(postgres_url)
    nodes = {name: ServerProcess(tmp_path / name, "--database-url", database,
                                 "--public-url", https,  # what GetSignalingChannelEndpoint says
                                 "--access-key-id", KEY, "--secret-access-key", SECRET,
                                 "--cors-allow-origins", page_origin, "--access-log",
                                 *coturn.kvslite_args())
             for name in NODES}
    haproxy = HAProxy(tmp_path, balancer, {name: node.port for name, node in nodes.items()},
                      tls_pem=pem, pinned_ports=dict(zip(NODES, pinned)))
    try:
        for node in nodes.values():
            node.start()
        haproxy.start()  # once each node's /ready answers 200
        kvs = boto3.client("kinesisvideo", endpoint_url=https, region_name=REGION,
                           aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                           verify=str(cert), config=Config(retries={"max_attempts": 1}))
        channel_arn = kvs.create_signaling_channel(ChannelName=CHANNEL)["ChannelARN"]
        kvs.close()
        yield Cluster(https, nodes, haproxy, channel_arn)
    finally:
        haproxy.stop()
        for node in nodes.values():
            node.stop()


@pytest.fixture
def peers(browser, page_origin, cluster):
    with peers_on(browser, page_origin, cluster.https) as open_peer:
        yield open_peer


def signaling_connections(node: ServerProcess) -> dict[str, int]:
    """The node's open signaling WebSockets by role, from its /metrics."""
    with LOCAL.open(f"{node.endpoint}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = dict(re.findall(r'^kvslite_signaling_connections\{role="(\w+)"\} ([\d.]+)$', text,
                            re.MULTILINE))
    return {role: int(float(found.get(role, 0))) for role in ("master", "viewer")}


def wait_for_node_of(cluster: Cluster, role: str, timeout_s: float = 5) -> str:
    """The one node with one `role` connection (and nothing else), once there is one."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {name: signaling_connections(node) for name, node in cluster.nodes.items()}
        holding = [name for name, c in counts.items() if c.get(role.lower()) == 1]
        if holding or time.monotonic() > deadline:
            assert len(holding) == 1, counts
            return holding[0]
        time.sleep(0.05)


def upgrades(node: ServerProcess, channel_arn: str) -> list[str]:
    """The node's access-log lines for accepted signaling upgrades (logged as each ends)."""
    return re.findall(rf" op=(ConnectAs\w+) stream={re.escape(channel_arn)} status=101 ",
                      node.output())


def test_master_and_viewer_on_two_nodes_behind_haproxy_connect_and_decode(cluster, peers):
    master = peers("MASTER")  # everything through the balancer, WebSocket included
    state = master.wait_for("peer.signaling === 'open'")
    assert (state["signaling"], state["errors"]) == ("open", [])
    master_node = wait_for_node_of(cluster, "MASTER")
    [viewer_node] = [name for name in NODES if name != master_node]

    viewer_wss = f"wss://127.0.0.1:{cluster.pinned[viewer_node]}"
    viewer = peers("VIEWER", clientId="viewer-1", wssEndpoint=viewer_wss)
    state = viewer.wait_for("peer.connectionState === 'connected' && peer.framesDecoded > 10")
    assert (state["errors"], state["signaling"], state["connectionState"]) == \
        ([], "open", "connected")
    assert state["framesDecoded"] > 10
    state = master.wait_for("peer.connectionState === 'connected' && peer.framesEncoded > 10")
    assert (state["errors"], state["connectionState"]) == ([], "connected")
    assert state["framesEncoded"] > 10

    # both WebSockets went through HAProxy: the master's to the balancer's port, as
    # GetSignalingChannelEndpoint said (--public-url), the viewer's to its pinned port
    assert state["wssEndpoint"] == cluster.https.replace("https://", "wss://")
    [master_url], [viewer_url] = master.websockets, viewer.websockets
    assert master_url.startswith(f"{state['wssEndpoint']}/?")
    assert viewer_url.startswith(f"{viewer_wss}/?")
    # ...and landed on different nodes: one signaling connection on each
    assert {name: signaling_connections(node) for name, node in cluster.nodes.items()} == {
        master_node: {"master": 1, "viewer": 0}, viewer_node: {"master": 0, "viewer": 1}}

    master.close()
    viewer.close()
    deadline = time.monotonic() + 5  # each upgrade is logged when its WebSocket ends
    expected = {master_node: ["ConnectAsMaster"], viewer_node: ["ConnectAsViewer"]}
    while (logged := {name: upgrades(node, cluster.channel_arn)
                      for name, node in cluster.nodes.items()}) != expected \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged == expected
    for node in cluster.nodes.values():
        assert "Traceback" not in node.output()
