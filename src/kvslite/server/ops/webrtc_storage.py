"""The `kinesis-video-webrtc-storage` service: JoinStorageSession and
JoinStorageSessionAsViewer (server/ingestion/sessions.py does the work).

JoinStorageSession answers an empty 200 once the storage peer's offer is on its way to
the master; the session itself runs on (the master answers over its WebSocket).
"""

from __future__ import annotations

from kvslite.server.api_errors import INVALID_ARGUMENT, ApiError
from kvslite.server.ingestion.sessions import StorageSessions
from kvslite.server.ops import requests as rq


class WebRtcStorage:
    def __init__(self, sessions: StorageSessions):
        self.sessions = sessions

    def operations(self) -> dict:
        return {"JoinStorageSession": self.join_storage_session,
                "JoinStorageSessionAsViewer": self.join_storage_session_as_viewer}

    def join_storage_session(self, request: rq.JoinStorageSessionInput) -> dict:
        self.sessions.join_from_thread(request.channel_arn)
        return {}

    def join_storage_session_as_viewer(self, request: rq.JoinStorageSessionAsViewerInput
                                       ) -> dict:
        """Forwarding the master's media to viewers is not built: the storage peer
        receives, it does not relay. InvalidArgumentException is the model's error for a
        request the service cannot take (ClientLimitExceeded would make clients retry)."""
        self.sessions.channels.resolve(None, request.channel_arn)  # 404 first, as AWS
        raise ApiError(INVALID_ARGUMENT, "JoinStorageSessionAsViewer is not supported by "
                                         "kvslite: viewers connect to the master directly")
