"""Wire the layers together and run them: stores -> archive -> providers -> edge."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import uvicorn

from kvslite.archive.fragments import Archive
from kvslite.archive.images import ImageSampler
from kvslite.archive.streams import Streams
from kvslite.config import Settings
from kvslite.edge.app import EdgeApp
from kvslite.ops.archived import ArchivedMedia
from kvslite.ops.control import ControlPlane
from kvslite.ops.media import Media
from kvslite.ops.playback import Playback
from kvslite.ops.putmedia import PutMedia
from kvslite.store.files import FileBlobStore
from kvslite.store.sqlite import SqliteMetadataStore
from kvslite.web import WebViewer

log = logging.getLogger("kvslite")


@dataclass
class Server:
    settings: Settings
    app: EdgeApp
    metadata: SqliteMetadataStore
    blobs: FileBlobStore

    def close(self) -> None:
        self.metadata.close()


def build(settings: Settings) -> Server:
    """Open the stores under the data dir and assemble the ASGI app."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    metadata = SqliteMetadataStore(data_dir / "kvslite.db")
    blobs = FileBlobStore(data_dir / "media")
    streams = Streams(metadata, region=settings.region, account_id=settings.account_id)
    archive = Archive(metadata, blobs)
    playback = Playback(streams, archive, endpoint_url=settings.endpoint_url)
    providers = {
        "kinesisvideo": [ControlPlane(streams, archive, endpoint_url=settings.endpoint_url)],
        "kinesis-video-media": [Media(streams, archive)],
        "kinesis-video-archived-media": [ArchivedMedia(
            streams, archive, ImageSampler(archive, max_requests=settings.max_image_requests),
            min_sampling_interval_ms=settings.min_sampling_interval_ms), playback],
    }
    app = EdgeApp(settings, providers, streaming={"/putMedia": PutMedia(streams, archive)},
                  pages={"/": WebViewer(), "/hls/": playback.hls_page,
                         "/dash/": playback.dash_page})
    return Server(settings, app, metadata, blobs)


class _Uvicorn(uvicorn.Server):
    """uvicorn with kvslite's start-up line and a plain exit 0 after SIGINT/SIGTERM."""

    def __init__(self, config: uvicorn.Config, settings: Settings):
        super().__init__(config)
        self.settings = settings

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            s = self.settings
            auth = "SigV4 required" if s.auth_enabled else "no credentials required"
            log.info("kvslite listening on http://%s:%d (endpoint %s, data in %s, %s)",
                     s.host, s.port, s.endpoint_url, s.data_dir.resolve(), auth)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after draining; a requested stop is a clean exit
        self._captured_signals.clear()


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; uvicorn drains open connections first."""
    settings.check()
    server = build(settings)
    config = uvicorn.Config(server.app, host=settings.host, port=settings.port,
                            lifespan="off", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=5)
    try:
        _Uvicorn(config, settings).run()
    finally:
        server.close()
        log.info("kvslite stopped")
