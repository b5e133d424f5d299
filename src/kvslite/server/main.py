"""Wire the layers together and run them: stores -> archive -> operations -> edge."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

import uvicorn

from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.delivery.deliverer import Deliverer
from kvslite.server.delivery.sns import SECRET_NAME, SnsSigner, new_key_and_certificate
from kvslite.server.archive.fragment_events import EventConfigs
from kvslite.server.archive.fragments import Archive
from kvslite.server.archive.image_cache import ImageCache
from kvslite.server.archive.leases import Leases
from kvslite.server.archive.retention import Sweeper
from kvslite.server.archive.sampling import ImageSampler
from kvslite.server.archive.sessions import SessionTokens
from kvslite.server.signaling.turn import IceServers
from kvslite.server.config import Settings
from kvslite.server.edge.app import EdgeApp
from kvslite.server.edge.authorization import Authorizer, arn_by_name
from kvslite.server.edge.connections import (
    RepeatFilter,
    default_max_connections,
    guarded_protocol,
    raise_descriptor_limit,
)
from kvslite.server.edge.credential_provider import (
    CredentialProvider,
    client_context,
    iot_protocol,
    parse_role_alias,
)
from kvslite.server.edge.tls import https_protocol, server_context
from kvslite.server.iam import tokens as session_credentials
from kvslite.server.iam.device_ca import DeviceCa
from kvslite.server.edge.websocket import SignalingEndpoint
from kvslite.server.ops.archived_media import ArchivedMedia
from kvslite.server.ops.clips import Clips
from kvslite.server.ops.event_configs import EventConfigurations
from kvslite.server.ops.get_media import GetMedia
from kvslite.server.ops.health import Health
from kvslite.server.ops.iam_api import IamApi
from kvslite.server.iam.credentials import Credentials
from kvslite.server.iam.server_key import open_keys
from kvslite.server.iam.users import Users
from kvslite.server.ops.kinesisvideo import KinesisVideo
from kvslite.server.ops.put_media import PutMedia
from kvslite.server.ops.signaling_channels import SignalingChannels
from kvslite.server.ops.signaling import Signaling
from kvslite.server.ops.sns_endpoints import SnsEndpoints
from kvslite.server.ops.streaming_sessions import StreamingSessions
from kvslite.server.ops.webrtc_storage import WebRtcStorage
from kvslite.server.ingestion import storage_sessions as storage
from kvslite.server.signaling.channels import Channels
from kvslite.server.signaling.cluster import ClusterRelay
from kvslite.server.signaling.hub import Hub, Limits
from kvslite.server.store.blobs import BlobStore
from kvslite.server.store.metadata import MetadataStore
from kvslite.server.store.postgres_signaling import SignalingBus
from kvslite.server.store.urls import is_embedded, open_blob_store, open_metadata_store
from kvslite.server.web import WebViewer
from kvslite.server.webhook_policy import WebhookPolicy

log = logging.getLogger("kvslite")


class DataDirInUse(Exception):
    """Another kvslite process serves this data directory."""


class StoreUnavailable(Exception):
    """The configured database or media store cannot be opened."""


@dataclass
class Server:
    settings: Settings
    app: EdgeApp
    metadata: MetadataStore
    blobs: BlobStore
    sweeper: Sweeper
    deliverer: Deliverer
    lock: IO | None  # the data directory's, when a store lives in it
    max_connections: int  # --max-connections, or what the descriptor limit allows
    hub: Hub | None = None  # the signaling WebSockets, told to GO_AWAY on shutdown
    iot: CredentialProvider | None = None  # the --iot-port listener's app

    def start(self) -> None:
        """Background work: temporary files left by a crash go, then the sweeper runs."""
        removed = self.blobs.remove_temp_files()
        if removed:
            log.info("removed %d temporary files left by an earlier crash", len(removed))
        self.sweeper.start()
        self.deliverer.start()

    def close(self) -> None:
        self.deliverer.stop()
        self.sweeper.stop()
        self.metadata.close()
        if self.lock is not None:
            self.lock.close()  # releases the data directory


def lock_data_dir(data_dir: Path) -> IO:
    """One kvslite process per data directory: SQLite and the media files are safe with
    one writer process, and leases, temporary-file clean-up and the sweeper assume it.
    A second process refuses to start (a cluster shares PostgreSQL and S3 instead)."""
    lock = open(data_dir / "kvslite.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise DataDirInUse(f"{data_dir} is in use by another kvslite ({holder}); stop it, "
                           f"or give this one its own --data-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


class Provider(Protocol):
    """An operations class (kvslite.server.ops): its handlers by operation name."""

    def operations(self) -> dict: ...


def build(settings: Settings) -> Server:
    """Open the stores under the data dir and assemble the ASGI app."""
    data_dir = settings.data_dir
    local = is_embedded(settings.metadata_url) or is_embedded(settings.blobs_url)
    lock = None
    if local:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(data_dir)
    try:
        metadata = open_metadata_store(settings.metadata_url)
        blobs = open_blob_store(settings.blobs_url, s3_endpoint_url=settings.s3_endpoint_url)
    except Exception as e:  # unreachable database, missing bucket, bad credentials...
        if lock is not None:
            lock.close()
        raise StoreUnavailable(f"cannot open the stores ({settings.metadata_url}, "
                               f"{settings.blobs_url}): {e}") from e
    # nodes sharing PostgreSQL take turns sweeping; one process on SQLite just sweeps
    sweeper = Sweeper(metadata, blobs, interval_s=settings.sweep_interval_s,
                      orphan_grace_s=settings.orphan_grace_s,
                      shared=not is_embedded(settings.metadata_url))
    leases = Leases(metadata)
    control = ControlPlane(metadata, region=settings.region, account_id=settings.account_id)
    channels = Channels(metadata, region=settings.region, account_id=settings.account_id)
    archive = Archive(metadata, blobs)
    tokens = SessionTokens(archive.secret("playback-session"))
    # temporary credentials: every node opens every node's session tokens (iam/tokens.py)
    keys = open_keys(metadata, iam_key_file(settings),  # users' secrets, session tokens
                     create=is_embedded(settings.metadata_url))
    temporary = session_credentials.SessionCredentials(keys.session_tokens)
    cache = ImageCache(settings.image_cache_mb << 20) if settings.image_cache_mb else None
    sampler = ImageSampler(archive, max_requests=settings.max_image_requests, cache=cache)
    event_configs = EventConfigs(metadata, region=settings.region,
                                 min_sampling_interval_ms=settings.min_sampling_interval_ms,
                                 queue_limit=settings.delivery_queue_limit,
                                 stream_limit=settings.delivery_stream_limit,
                                 webhook_policy=WebhookPolicy.parse(settings.webhook_allow),
                                 media_url=settings.blobs_url)
    # made at first start, shared by every node: notifications are signed alike (sns.py)
    signer = SnsSigner(archive.secret(SECRET_NAME, new_key_and_certificate),
                       public_url=settings.endpoint_url)
    deliverer = Deliverer(metadata, archive, sampler, event_configs,
                          account_id=settings.account_id, signer=signer,
                          s3_endpoint_url=settings.s3_endpoint_url,
                          max_attempts=settings.delivery_max_attempts)
    sessions = StreamingSessions(control, archive, endpoint_url=settings.endpoint_url,
                                 tokens=tokens)
    hub = signaling_hub(settings)  # the WebSockets' and SendAlexaOfferToMaster's
    ice_servers = IceServers(turn_uris=settings.turn_uri, secret=settings.turn_secret,
                             ttl_s=settings.turn_ttl_s, stun_uri=settings.stun_server,
                             clock=time.time)
    storage_sessions = storage.StorageSessions(
        hub, channels, ice_servers, control, archive, leases,
        settings=storage.Settings(max_duration_s=settings.storage_session_max_s,
                                  fragment_deadline_s=settings.fragment_deadline_s),
        event_configs=event_configs, on_deliveries=deliverer.wake)
    providers: list[Provider] = [
        KinesisVideo(control, endpoint_url=settings.endpoint_url, on_delete=sweeper.wake,
                     channels=channels),
        SignalingChannels(channels, control, endpoint_url=settings.endpoint_url),
        GetMedia(control, archive, leases),
        ArchivedMedia(control, archive, sampler,
                      min_sampling_interval_ms=settings.min_sampling_interval_ms),
        EventConfigurations(control, event_configs),
        Clips(control, archive, now_ms=tokens.now_ms),
        sessions,
        Signaling(channels, ice_servers, hub),
        WebRtcStorage(storage_sessions),
    ]
    handlers: dict = {}
    for provider in providers:
        for operation, handler in provider.operations().items():
            if operation in handlers:
                raise ValueError(f"two handlers for {operation}")
            handlers[operation] = handler
    connections = settings.max_connections or default_max_connections()
    put_media = PutMedia(control, archive, leases,
                         fragment_deadline_s=settings.fragment_deadline_s,
                         event_configs=event_configs, on_deliveries=deliverer.wake)
    channels.on_delete.append(lambda channel: hub.channel_deleted_threadsafe(channel.arn))
    credentials = Credentials(metadata, keys.access_keys, account_id=settings.account_id,
                              admin_key_id=settings.access_key_id,
                              admin_secret=settings.secret_access_key, sessions=temporary)
    users = Users(metadata, keys.access_keys, account_id=settings.account_id)
    authorizer = Authorizer(region=settings.region, account_id=settings.account_id,
                            stream_arn=arn_by_name(control.resolve),
                            channel_arn=arn_by_name(channels.resolve), user_path=users.path)
    iam = IamApi(users, account_id=settings.account_id)
    app = EdgeApp(settings, handlers, put_media=put_media,
                  routes=[*sessions.routes(), *Health(archive).routes(),
                          *SnsEndpoints(signer).routes(),
                          *WebViewer(min_sampling_interval_ms=settings.min_sampling_interval_ms
                                     ).routes()],
                  max_media_connections=connections - max(2, connections // 10),
                  access_log=settings.access_log,
                  signaling=SignalingEndpoint(settings, channels, hub,
                                              access_log=settings.access_log,
                                              lookup=credentials.lookup,
                                              reads_store=credentials.reads_store,
                                              authorizer=authorizer),
                  lookup=credentials.lookup, reads_store=credentials.reads_store,
                  query_handlers={"iam": iam.operations(), "sts": iam.sts_operations()},
                  authorizer=authorizer)
    iot = None
    if settings.iot_port is not None:
        iot = CredentialProvider(temporary,
                                 [parse_role_alias(a) for a in settings.iot_role_alias],
                                 account_id=settings.account_id,
                                 ttl_s=settings.iot_credential_ttl_s)
    return Server(settings, app, metadata, blobs, sweeper, deliverer, lock, connections, hub,
                  iot)


def iam_key_file(settings: Settings) -> Path | None:
    """--iam-key-file; embedded, by default in the data directory; in a cluster, none
    unless given (the key then stays in the shared store, iam/server_key.py)."""
    if settings.iam_key_file is not None:
        return settings.iam_key_file
    return settings.data_dir / "iam.key" if is_embedded(settings.metadata_url) else None


def signaling_hub(settings: Settings) -> Hub:
    hub = Hub(Limits(max_viewers=settings.signaling_max_viewers,
                     max_payload_bytes=settings.signaling_max_payload_bytes,
                     sdp_per_s=settings.signaling_sdp_per_s,
                     ice_per_s=settings.signaling_ice_per_s,
                     max_lifetime_s=settings.signaling_max_lifetime_s,
                     idle_timeout_s=settings.signaling_idle_timeout_s))
    if not is_embedded(settings.metadata_url):  # nodes on PostgreSQL relay through it
        hub.relay = ClusterRelay(hub, SignalingBus(settings.metadata_url))
    return hub


class UvicornServer(uvicorn.Server):
    """uvicorn configured for kvslite: its start-up line, a plain exit 0 after
    SIGINT/SIGTERM (after draining open requests), and `on_exit` called on a signal."""

    def __init__(self, server: Server, *, on_exit: Callable[[], None] | None = None):
        settings = server.settings
        protocol = guarded_protocol(max_connections=server.max_connections,
                                    header_timeout_s=settings.header_timeout_s)
        # TLS (tls_enabled) in kvslite's protocol, inside its limits (edge/tls.py)
        if settings.tls_cert and settings.tls_key:
            protocol = https_protocol(protocol, server_context(settings.tls_cert,
                                                               settings.tls_key))
        super().__init__(uvicorn.Config(
            server.app, host=settings.host, port=settings.port, lifespan="off",
            access_log=False, log_level="warning", timeout_graceful_shutdown=5,
            http=protocol,
            # a signaling frame is a payload and a few keys; refuse giant frames unread
            ws_max_size=4 * settings.signaling_max_payload_bytes + 4096))
        self.settings = settings
        self.hub = server.hub
        self.on_exit = on_exit
        self.iot = iot_server(server) if server.iot is not None else None
        self._iot_task: asyncio.Task | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.iot is not None:  # served by this loop beside the main port
            self._iot_task = asyncio.create_task(self.iot._serve())
        if self.hub is not None:  # a deletion is announced from here, connections or not
            self.hub.loop = asyncio.get_running_loop()
        if self.started:
            s = self.settings
            auth = "SigV4 required" if s.auth_enabled else "no credentials required"
            log.info("kvslite listening on %s://%s:%d (endpoint %s, data in %s, %s)",
                     "https" if s.tls_enabled else "http", s.host, s.port, s.endpoint_url,
                     s.data_dir.resolve(), auth)

    async def shutdown(self, sockets=None) -> None:
        if self.iot is not None and self._iot_task is not None:
            self.iot.should_exit = True
            await self._iot_task
        if self.hub is not None and isinstance(self.hub.storage_peer, storage.StorageSessions):
            await self.hub.storage_peer.close_all()  # last fragments archived, leases released
        if self.hub is not None:  # GO_AWAY first: the SDKs reconnect on it
            await self.hub.go_away_all()
        await super().shutdown(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.on_exit is not None:
            self.on_exit()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after draining; a requested stop is a clean exit
        self._captured_signals.clear()


def iot_server(server: Server) -> uvicorn.Server:
    """The IoT credential provider's listener (--iot-port): uvicorn on the main server's
    event loop, started and stopped with it (UvicornServer), in kvslite's guarded HTTPS
    with a client certificate required. Its server certificate is --tls-cert's, else one
    kvslite's device CA issues for the host names."""
    settings = server.settings
    assert server.iot is not None and settings.iot_port is not None
    ca = DeviceCa(settings.data_dir / "iot-ca")
    if settings.tls_cert and settings.tls_key:
        cert, key = settings.tls_cert, settings.tls_key
    else:
        cert, key = ca.ensure().server_certificate(_host_names(settings))
    device_cas = list(settings.iot_ca) or [ca.ensure().cert_path]
    protocol = iot_protocol(max_connections=server.max_connections,
                            header_timeout_s=settings.header_timeout_s)
    context = client_context(cert, key, device_cas, settings.iot_crl)
    return uvicorn.Server(uvicorn.Config(
        server.iot, host=settings.host, port=settings.iot_port, lifespan="off",
        access_log=False, log_level="warning", timeout_graceful_shutdown=5,
        http=https_protocol(protocol, context)))


def _host_names(settings: Settings) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    if settings.host not in ("0.0.0.0", "::", ""):
        names.insert(0, settings.host)
    public = urlsplit(settings.endpoint_url).hostname
    if public:
        names.insert(0, public)
    return names


def configure_logging(level: str) -> None:
    """Log lines on stderr, a flood of one line once per 10 s (`serve` and `demo` alike)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Server]:
    """The server built, within the descriptor limit's reach, its background work started;
    closed on the way out. Serve it with UvicornServer."""
    settings.check()
    raise_descriptor_limit()  # before build: the connection cap derives from it
    server = build(settings)
    try:
        server.start()
        yield server
    finally:
        server.close()
        log.info("kvslite stopped")


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; uvicorn drains open connections first."""
    with running(settings) as server:
        UvicornServer(server).run()
