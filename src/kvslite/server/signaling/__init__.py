"""WebRTC signaling: channels, the WebSocket hub, TURN credentials."""
