"""Which node hosts a channel's storage session, and how its master's messages reach it.

A cluster's nodes share PostgreSQL; JoinStorageSession may reach any of them (behind the
balancer) while the master's WebSocket is on another. Embedded mode runs the same code on
its one node, where the relay is local.

- A lease per channel in the metadata store (`storage-session:<channel ARN>`, one slot,
  renewed with the stream's PutMedia lease) names the node hosting the channel's session:
  however many JoinStorageSession calls race, one node records the channel.
- Newest master wins: a JoinStorageSession on a node without the lease asks the holder,
  through the signaling relay, to end its session (which releases the lease), and waits
  up to TAKEOVER_WAIT_S for the lease. A holder that died (kill -9) cannot answer: its
  lease expires within LEASE_TTL_MS, JoinStorageSession answers ClientLimitExceeded until
  then, and the master's retried join starts a session on a live node.
- The session's offer goes to the master as any message for a master does (the relay
  finds its node). The master's answer and candidates (no recipient) reach the hub of the
  node holding its WebSocket; if that node does not host the session, they go through
  the relay to the recipient `STORAGE`, which only the hosting node claims
  (signaling/cluster.py). Nobody claims what comes for a session that is gone: it expires.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from kvslite.server.archive.leases import Leases
from kvslite.server.signaling.cluster import STORAGE, ClusterRelay, StorageHost
from kvslite.server.signaling.hub import Hub
from kvslite.server.store.metadata import Lease

STORAGE_SESSION = "storage-session"  # the lease naming a channel's hosting node
TAKEOVER_WAIT_S = 5.0  # how long a JoinStorageSession waits for another node to let go
POLL_S = 0.2


class Hosting:
    def __init__(self, hub: Hub, leases: Leases):
        """Made before anything wraps the hub's relay (storage_viewers.py)."""
        self.hub, self.leases = hub, leases
        self.cluster = hub.relay if isinstance(hub.relay, ClusterRelay) else None

    @property
    def clustered(self) -> bool:
        return self.cluster is not None

    def serve(self, host: StorageHost) -> None:
        """Have the relay hand `host` what other nodes send to this node's sessions."""
        if self.cluster is not None:
            self.cluster.storage = host

    async def take(self, channel_arn: str) -> Lease | None:
        """The channel's hosting lease; if another node holds it, after asking it to end
        its session. None if it did not let go in time (dead: its lease will expire)."""
        resource = f"{STORAGE_SESSION}:{channel_arn}"
        lease = await asyncio.to_thread(self.leases.acquire_resource, resource)
        if lease is None and self.clustered:
            await self.to_host(channel_arn, {"end": "a newer JoinStorageSession on another "
                                                    "node replaced it"})
            lease = await self.wait_for(lambda: self.leases.acquire_resource(resource))
        return lease

    async def wait_for(self, acquire: Callable[[], Lease | None]) -> Lease | None:
        """`acquire` retried until it gives a lease or TAKEOVER_WAIT_S passed (cluster
        only: on one node nothing is being let go meanwhile)."""
        deadline = time.monotonic() + (TAKEOVER_WAIT_S if self.clustered else 0)
        while (lease := await asyncio.to_thread(acquire)) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL_S)
        return lease

    async def to_host(self, channel_arn: str, item: dict) -> bool:
        """Send `item` to the node hosting the channel's session (False: none took it,
        which the local relay says of every item: there is no other node)."""
        return await self.hub.relay.deliver(channel_arn, STORAGE, json.dumps(item))
