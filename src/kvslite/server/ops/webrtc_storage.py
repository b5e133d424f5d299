"""The `kinesis-video-webrtc-storage` service: JoinStorageSession
(server/ingestion/storage_sessions.py does the work).

JoinStorageSession answers an empty 200 once the storage peer's offer is on its way to
the master; the session itself runs on (the master answers over its WebSocket).
JoinStorageSessionAsViewer likewise once the offer of the master's live media is on its
way to the viewer (server/ingestion/storage_viewers.py).
"""

from __future__ import annotations

from kvslite.server.ingestion.storage_sessions import StorageSessions
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs


class WebRtcStorage:
    def __init__(self, sessions: StorageSessions):
        self.sessions = sessions

    def operations(self) -> dict:
        return {"JoinStorageSession": self.join_storage_session,
                "JoinStorageSessionAsViewer": self.join_storage_session_as_viewer}

    def join_storage_session(self, request: rq.JoinStorageSessionInput
                             ) -> rs.JoinStorageSessionOutput:
        self.sessions.join_from_thread(request.channel_arn)
        return {}

    def join_storage_session_as_viewer(self, request: rq.JoinStorageSessionAsViewerInput
                                       ) -> rs.JoinStorageSessionAsViewerOutput:
        self.sessions.join_as_viewer_from_thread(request.channel_arn, request.client_id)
        return {}
