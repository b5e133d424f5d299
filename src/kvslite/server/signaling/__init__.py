"""WebRTC signaling: channels and the rules of their API, the WebSocket hub and ICE (TURN)
servers, above the stores.

The records the operations layer works with are re-exported here, so nothing above
needs to import a store.
"""

from kvslite.server.store.metadata import SignalingChannel

__all__ = ["SignalingChannel"]
