"""WebRTC signaling: channels, the WebSocket hub and ICE (TURN) servers."""
